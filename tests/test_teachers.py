"""Wiring of the frozen teachers (DINOv2 semantic regularization, LPIPS) into tokenizer training.

The teachers here have random weights, saved as converted files exactly like the converters write
them: a tiny DINOv2 whose width equals the tiny tokenizer's `distill_dim` (32), and LPIPS with the
real VGG16 shapes. Parity of the networks themselves is in test_dinov2.py / test_lpips.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gigatok_jax import parallel
from gigatok_jax.config import validate
from gigatok_jax.convert import lpips as lpips_convert
from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError, ConfigError
from gigatok_jax.models import dinov2, lpips
from gigatok_jax.train import teachers
from gigatok_jax.train.tokenizer import TokenizerTask
from helpers import load_recipe

ONE_DEVICE = jax.devices()[:1]


def _save_dinov2(path, width: int) -> str:
  cfg = dinov2.DinoV2Config(variant="custom", width=width, depth=1, heads=2, mlp_hidden=2 * width,
                            pos_grid=8)
  model = dinov2.DinoV2(cfg, rngs=nnx.Rngs(0))
  weight_files.save_flat(str(path), weight_files.flatten_module(model),
                         {"model": dinov2.MODEL_NAME, "config": cfg.to_json_dict()})
  return str(path)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("teachers")
  model = lpips.LPIPS(rngs=nnx.Rngs(1))
  flat = weight_files.flatten_module(model)
  # Positive heads like the shipped ones, so the distance is a real positive number.
  flat = {k: (np.abs(v) + 0.1 if "lin" in k else v) for k, v in flat.items()}
  weight_files.save_flat(str(d / "lpips.safetensors"), flat, {"model": lpips_convert.MODEL_NAME})
  return {"dinov2": _save_dinov2(d / "dino.safetensors", 32),
          "dinov2_wide": _save_dinov2(d / "dino48.safetensors", 48),
          "lpips": str(d / "lpips.safetensors")}


def _config(files=None, semantic=0.5, perceptual=1.0):
  config = load_recipe("tokenizer_ss", "tiny")
  config.loss.semantic_weight = semantic
  config.loss.perceptual_weight = perceptual
  if files:
    config.teachers.dinov2_path = files["dinov2"]
    config.teachers.lpips_path = files["lpips"]
  return config


@pytest.mark.parametrize("edit, culprit, words", [
    (lambda c, f: None, "teachers.dinov2_path", "convert.dinov2"),
    (lambda c, f: setattr(c.teachers, "dinov2_path", "/nonexistent/dino.safetensors"),
     "teachers.dinov2_path", "not found"),
    (lambda c, f: setattr(c.teachers, "dinov2_path", f["lpips"]), "teachers.dinov2_path",
     "holds 'lpips_vgg16' weights"),
    (lambda c, f: setattr(c.teachers, "dinov2_path", f["dinov2_wide"]), "model.distill_dim",
     "width 48"),
])
def test_teacher_files_are_checked_before_compilation(teacher_files, edit, culprit, words):
  config = _config()
  config.teachers.lpips_path = teacher_files["lpips"]
  edit(config, teacher_files)
  with pytest.raises(ConfigError) as e:
    validate.validate(config, num_devices=1, check_data=False, check_teachers=True)
  assert e.value.key == culprit
  assert words in str(e.value)


def test_missing_lpips_file_names_its_key(teacher_files):
  config = _config(semantic=0.0)
  with pytest.raises(ConfigError) as e:
    validate.check_teachers_config(config)
  assert e.value.key == "teachers.lpips_path" and "convert.lpips" in str(e.value)


def test_train_step_with_teachers(teacher_files):
  config = _config(teacher_files)
  validate.validate(config, num_devices=1, check_data=False, check_teachers=True)
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, ONE_DEVICE))
  assert task.teachers.names == ("dinov2", "lpips")
  frozen = task.load_teachers()
  frozen_before = jax.tree.map(np.asarray, frozen)
  state = task.init_state()
  # The teachers are not part of the train state: no parameters, no optimizer moments.
  plain = TokenizerTask(_config(semantic=0.0, perceptual=0.0),
                        parallel.make_mesh(config.mesh, ONE_DEVICE))
  assert len(jax.tree.leaves(task.abstract_state)) == len(jax.tree.leaves(plain.abstract_state))

  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
      {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
       "label": np.zeros((4,), np.int32)}, task.mesh, task.rules)
  projector_before = jax.tree.map(np.asarray, state.gen_params["s1to2decoder"]["distill_mlp"])
  with jax.set_mesh(task.mesh):
    state, metrics = task.jitted_train_step((False, False))(state, batch, frozen)
  metrics = jax.device_get(metrics)
  assert metrics["lpips"] > 0 and np.isfinite(metrics["lpips"])
  assert -1.0 <= metrics["semantic_cos"] <= 1.0
  # The semantic loss trains the projector (it gets no gradient without it) ...
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                       state.gen_params["s1to2decoder"]["distill_mlp"], projector_before)
  assert max(jax.tree.leaves(moved)) > 0
  # ... while the teachers stay frozen (and were not donated).
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen_before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_semantic_target_matches_teacher_on_its_grid(teacher_files):
  """The teacher sees 14 x grid pixels, so it returns one patch token per decoder query."""
  config = _config(teacher_files, perceptual=0.0)
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, ONE_DEVICE))
  frozen = task.load_teachers()
  images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
  target = task.teachers.semantic_target(frozen, images)
  assert target.shape == (2, 8 * 8, 32)


def test_cosine_similarity():
  a = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 7)), jnp.float32)
  assert abs(float(teachers.cosine_similarity(a, 3.0 * a)) - 1.0) < 1e-6
  assert abs(float(teachers.cosine_similarity(a, -a)) + 1.0) < 1e-6


def test_trainer_runs_with_teachers_and_shortcut_lpips(teacher_files, tmp_path):
  """The real loop: teachers loaded from the files named in the config, the auxiliary phase
  (shortcut reconstruction + its LPIPS), a checkpoint at the end. (The plain phase with teachers:
  test_train_step_with_teachers; one compile less here.)"""
  from gigatok_jax.train import loop
  config = _config(teacher_files)
  config.total_steps = 1
  config.checkpoint_every_steps = 100
  config.image_every_steps = 100
  config.loss.aux_loss_end = 1
  config.loss.shortcut_reconstruction = True
  config.loss.disc_weight = 0.0
  config.mesh.data = 1
  validate.validate(config, num_devices=1)
  state = loop.train(config, str(tmp_path), progress=False, devices=ONE_DEVICE)
  assert int(state.step) == 1
  assert os.listdir(os.path.join(tmp_path, "checkpoints"))


def test_teachers_follow_compute_dtype_and_mesh(teacher_files):
  """bf16 tokenizers get bf16 teachers; teacher weights are sharded by their logical axis names."""
  config = _config(teacher_files)
  config.model.dtype = "bfloat16"
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:8])
  t = teachers.FrozenTeachers(config)
  assert t.dtype == jnp.bfloat16
  specs = [s.spec for s in jax.tree.leaves(t.shardings(mesh, parallel_rules(config)))]
  assert any(any(axis is not None for axis in spec) for spec in specs), specs
  frozen = t.load(mesh, parallel_rules(config))
  images = jnp.zeros((2, 64, 64, 3), jnp.float32)
  assert t.semantic_target(frozen, images).shape == (2, 64, 32)


def test_wrong_shape_in_teacher_file_names_the_parameter(teacher_files, tmp_path):
  flat, meta = weight_files.load_flat(teacher_files["dinov2"])
  name = next(k for k in flat if k.endswith("norm.scale"))
  flat[name] = np.ones((7,), np.float32)
  path = str(tmp_path / "bad.safetensors")
  weight_files.save_flat(path, flat, {k: v for k, v in meta.items() if k != "format"})
  config = _config(dict(teacher_files, dinov2=path))
  validate.check_teachers_config(config)       # the header is fine ...
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, ONE_DEVICE))
  with pytest.raises(CheckpointError) as e:  # ... the tensor is not: named, with both shapes
    task.load_teachers()
  assert name in str(e.value) and "(7,)" in str(e.value) and "(32,)" in str(e.value)


def parallel_rules(config):
  return tuple(tuple(r) for r in config.mesh.axis_rules)
