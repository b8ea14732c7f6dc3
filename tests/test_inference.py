"""inference.py + runs.py: loading a trained run for inference builds no training objects and
reads only the weights; the builder (build.py) gives the same shapes and shardings as training."""

import jax
import numpy as np
import pytest

from gigatok_jax import build, inference, parallel
from gigatok_jax.errors import CheckpointError
from helpers import forbid_training_objects, load_recipe, saved_run

ONE_DEVICE = jax.devices()[:1]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_tokenizer_loads_without_optimizer_discriminator_or_teachers(tmp_path, monkeypatch, ema):
  from gigatok_jax.train.tokenizer import TokenizerTask
  config = load_recipe("demo", "tiny")
  config.mesh.data = 1
  config.optim.ema_decay = ema
  workdir, state = saved_run(tmp_path, config, TokenizerTask)
  forbid_training_objects(monkeypatch)
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh, ONE_DEVICE))
  assert loaded.step == 0 and loaded.source == "checkpoint step 0"
  want = state.ema_params if ema else state.gen_params   # EMA weights when the run kept them
  got, expect = jax.tree.leaves(loaded.params), jax.tree.leaves(want)
  assert len(got) == len(expect)
  for a, b in zip(got, expect):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  images = np.zeros((2, config.data.image_size, config.data.image_size, 3), np.float32)
  recon, codes = inference.reconstruct_fn(loaded.spec)(loaded.params, images)
  assert recon.shape == images.shape and codes.shape[0] == 2


def test_gpt_loads_without_optimizer(tmp_path, monkeypatch):
  from gigatok_jax.train.gpt import GPTTask
  config = load_recipe("demo_ar", "tiny")
  config.mesh.data = 1
  workdir, state = saved_run(tmp_path, config, GPTTask)
  forbid_training_objects(monkeypatch)
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh, ONE_DEVICE))
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  m = config.model
  tokens = np.zeros((2, m.num_tokens), np.int32)
  logits = loaded.model()(tokens, np.zeros((2,), np.int32))
  assert logits.shape == (2, m.num_tokens, m.vocab_size)


def test_builder_matches_the_training_state(monkeypatch):
  """The task's generator shapes and shardings are the builder's, on a 2-device FSDP mesh."""
  from gigatok_jax.train.tokenizer import TokenizerTask
  config = load_recipe("tokenizer_ss", "tiny")
  config.mesh.fsdp, config.mesh.data = 2, 1
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:2])
  spec = build.tokenizer(config, mesh)
  task = TokenizerTask(config, mesh)
  assert jax.tree.structure(spec.abstract) == jax.tree.structure(task.abstract_state.gen_params)
  for a, b in zip(jax.tree.leaves(spec.abstract), jax.tree.leaves(task.abstract_state.gen_params)):
    assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
  assert spec.num_params == task.num_params


def test_inference_without_weights_is_one_clear_error(tmp_path):
  config = load_recipe("demo", "tiny")
  config.mesh.data = 1
  with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints: train the tokenizer"):
    inference.load(config, str(tmp_path), parallel.make_mesh(config.mesh, ONE_DEVICE))


def test_compute_dtype_rule():
  """'auto' computes a bfloat16 recipe in float32 on the CPU backend only; the others are literal."""
  config = load_recipe("demo_ar", "tiny")
  config.model.dtype = "bfloat16"
  want = {("auto", "cpu"): "float32", ("auto", "tpu"): "bfloat16", ("auto", "gpu"): "bfloat16",
          ("model", "cpu"): "bfloat16", ("float32", "tpu"): "float32",
          ("bfloat16", "cpu"): "bfloat16"}
  for (choice, platform), dtype in want.items():
    config.inference_dtype = choice
    assert inference.compute_dtype(config, platform) == dtype, (choice, platform)
  del config.inference_dtype                       # a run saved before the key existed: 'auto'
  assert inference.compute_dtype(config, "cpu") == "float32"


def test_bfloat16_gpt_runs_in_float32_on_cpu_unless_asked(tmp_path, capsys):
  from gigatok_jax.train.gpt import GPTTask
  config = load_recipe("demo_ar", "tiny")
  config.mesh.data = 1
  config.model.dtype = "bfloat16"
  workdir, _ = saved_run(tmp_path, config, GPTTask)
  mesh = parallel.make_mesh(config.mesh, ONE_DEVICE)
  tokens = np.arange(2 * config.model.num_tokens, dtype=np.int32).reshape(2, -1) % 7
  labels = np.array([1, 2], np.int32)
  out = {}
  for choice in ("auto", "model", "float32"):
    config.inference_dtype = choice
    loaded = inference.load(config, workdir, mesh)
    # The last block's output (the head starts at zero, so the logits would all be 0).
    hidden = loaded.model().hidden_states(tokens, labels, config.model.layers)
    out[choice] = np.asarray(hidden.astype(np.float32))
    assert loaded.config.model.dtype == ("bfloat16" if choice == "model" else "float32")
  assert config.model.dtype == "bfloat16"                      # the caller's config is untouched
  assert "inference computes in float32 (model.dtype is bfloat16; inference_dtype='auto')" in (
      capsys.readouterr().out)
  np.testing.assert_array_equal(out["auto"], out["float32"])
  assert not np.array_equal(out["auto"], out["model"])   # bfloat16 rounding shows
  np.testing.assert_allclose(out["auto"], out["model"], rtol=0.05, atol=0.05)


def test_gpt_runs_pass_their_inference_dtype_and_skip_training_only_keys(tmp_path):
  """The tokenizer a GPT decodes with takes the GPT config's inference_dtype; sampling a run does
  not refuse a training-only model key (attention core, remat) that differs from the saved one."""
  import os
  from gigatok_jax import runs
  from gigatok_jax.errors import ConfigError
  from gigatok_jax.modes import sample
  from helpers import REPO
  config = load_recipe("demo_ar")
  config.tokenizer.update(workdir=str(tmp_path / "tok"),
                          recipe=os.path.join(REPO, "configs", "demo_ar.py") + ":tokenizer")
  config.inference_dtype = "model"
  assert runs.gpt_tokenizer_config(config).inference_dtype == "model"
  runs.write_config(config, str(tmp_path / "gpt"))
  config.model.update(attention="xla", remat="full")
  sample.check_trained_model(config, str(tmp_path / "gpt"))
  config.model.width *= 2
  with pytest.raises(ConfigError, match="model.width"):
    sample.check_trained_model(config, str(tmp_path / "gpt"))
