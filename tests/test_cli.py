"""The command line: summary without allocation, and clear one-line errors for bad input."""

import os
import textwrap

import pytest

from gigatok_jax import config as config_lib
from gigatok_jax.config import validate
from gigatok_jax.errors import ConfigError
from helpers import load_recipe, run_cli


def assert_user_error(proc, *needles):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for needle in needles:
    assert needle in proc.stderr, proc.stderr[-2000:]


def test_summary_of_3b_recipe_without_allocating():
  proc = run_cli("--config=configs/tokenizer_xlxxl.py", "--mode=summary", timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "2,893,970,443" in proc.stdout
  assert "s1to2decoder" in proc.stdout and "distill_mlp" in proc.stdout
  assert "image 256px -> 256 tokens" in proc.stdout
  demo = run_cli("--config=configs/demo.py", "--mode=summary")   # 128 tokens on an 8 x 8 grid
  assert demo.returncode == 0 and "image 64px -> 128 tokens" in demo.stdout, demo.stderr[-2000:]


def test_unknown_override_key_is_rejected():
  proc = run_cli("--config=configs/demo.py", "--mode=summary", "--config.optim.lrr=1e-3")
  assert proc.returncode != 0
  assert "lrr" in proc.stderr


def test_missing_dataset_names_the_key(tmp_path):
  proc = run_cli("--config=configs/tokenizer_ss.py", f"--workdir={tmp_path}",
                 "--config.loss.semantic_weight=0", "--config.loss.perceptual_weight=0",
                 f"--config.data.train_path={tmp_path}/nothing_here")
  assert_user_error(proc, "data.train_path")
  assert proc.returncode == 2


def test_paper_recipe_without_teacher_files_says_what_to_convert(tmp_path):
  proc = run_cli("--config=configs/tokenizer_ss.py", f"--workdir={tmp_path}",
                 f"--config.teachers.dinov2_path={tmp_path}/dino.safetensors")
  assert_user_error(proc, "teachers.dinov2_path", "not found", "gigatok_jax.convert.dinov2")
  assert proc.returncode == 2


def test_bad_config_file_names_the_key(tmp_path):
  path = tmp_path / "my_recipe.py"
  path.write_text(textwrap.dedent("""
      from gigatok_jax import config
      def get_config():
        c = config.tokenizer_config()
        c.data.source = "demo"
        c.model.enc_widht = 512
        return c
  """))
  proc = run_cli(f"--config={path}", "--mode=summary")
  assert_user_error(proc, "model.enc_widht", "did you mean 'model.enc_width'")


def test_batch_not_divisible_by_data_parallel_devices():
  config = load_recipe("demo")
  config.global_batch_size = 6
  with pytest.raises(ConfigError) as e:
    validate.validate(config, num_devices=4, check_data=False)
  assert e.value.key == "global_batch_size"
  assert "4 data-parallel devices" in str(e.value)


@pytest.mark.parametrize("key, value, culprit", [
    ("model.enc_heads", 7, "model.enc_width"),
    ("model.distill_depth", 9, "model.distill_depth"),
    ("model.kind", "3d", "model.kind"),
    ("model.dtype", "float16", "model.dtype"),
    ("optim.lr", -1.0, "optim.lr"),
    ("loss.semantic_weight", -0.5, "loss.semantic_weight"),
    ("total_steps", 0, "total_steps"),
    ("data.image_size", 80, "data.image_size"),
])
def test_semantic_checks_name_the_key(key, value, culprit):
  config = load_recipe("demo").unlock()
  group, _, name = key.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(ConfigError) as e:
    validate.validate(config, num_devices=1, check_data=False)
  assert e.value.key == culprit


def test_wrong_type_names_the_key():
  config = load_recipe("demo").unlock()
  del config.optim["b1"]
  config.optim.b1 = "high"
  with pytest.raises(ConfigError) as e:
    validate.check_schema(config, config_lib.tokenizer_config())
  assert e.value.key == "optim.b1"


@pytest.mark.parametrize("name", ["tokenizer_ss", "tokenizer_sb", "tokenizer_bl", "tokenizer_xlxxl",
                                  "tokenizer_ss_2d", "tokenizer_sb_2d", "tokenizer_bl_2d", "demo"])
def test_every_recipe_is_valid_and_has_launch_keys(name):
  for variant in ("", "tiny"):
    config = load_recipe(name, variant)
    for key in ("total_steps", "global_batch_size", "checkpoint_every_steps"):
      assert key in config and isinstance(config[key], int)
    validate.validate(config, num_devices=1, check_data=False)


def test_reconstruct_needs_no_teacher_files(tmp_path):
  """Inference never reads the frozen teachers: with S-S's LPIPS and DINOv2 loss weights and no
  teacher files, reconstruct gets as far as looking for the weights."""
  config = load_recipe("tokenizer_ss")
  assert config.loss.perceptual_weight > 0 and not config.teachers.lpips_path
  proc = run_cli("--config=configs/tokenizer_ss.py:tiny", f"--workdir={tmp_path}",
                 "--mode=reconstruct", "--config.data.source=demo",
                 f"--config.loss.perceptual_weight={config.loss.perceptual_weight}",
                 f"--config.loss.semantic_weight={config.loss.semantic_weight}")
  assert_user_error(proc, "no checkpoint")


def test_reconstruct_without_checkpoint_is_a_clear_error(tmp_path):
  proc = run_cli("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--mode=reconstruct")
  assert_user_error(proc, "no checkpoint")
  assert os.path.basename(str(tmp_path)) in proc.stderr
