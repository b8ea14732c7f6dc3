"""What a run reports: TensorBoard event files without TensorFlow (read back with TensorBoard's own
reader), plain log lines off a terminal, an ETA that leaves out compiles, the final line, and the
one-line error of the optional [tfds] extra. No training step is compiled here."""

import io
import os
import subprocess
import sys
import textwrap
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from helpers import REPO, subprocess_env

from gigatok_jax import console, runs
from gigatok_jax import tensorboard_writer as tb
from gigatok_jax.errors import ConfigError
from gigatok_jax.train import reporting


class FakeClock:
  """A clock the test moves by hand (no wall-clock values are asserted)."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self) -> float:
    return self.now

  def advance(self, seconds: float) -> None:
    self.now += seconds


def read_events(logdir):
  # tensorboard's documented switch to its TensorFlow stub: its reader would otherwise import the
  # real TensorFlow where one is installed (seconds per process; the stub reads the same files).
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
  acc.Reload()
  return acc


# ------------------------------------------------------------------------------ TensorBoard files
def test_crc32c_matches_the_standard_check_value():
  assert tb.crc32c(b"123456789") == 0xE3069283
  assert tb.crc32c(b"") == 0


def test_scalars_and_image_grid_read_back_with_tensorboard(tmp_path):
  workdir = str(tmp_path)
  reporter = reporting.Reporter(workdir, total_steps=10, start_step=0, progress=False)
  reporter.step(1, compiled=True)
  reporter.scalars(1, {"gen_loss": np.float32(0.5), "psnr": 11.0}, images_per_step=8)
  reporter.step(5)
  reporter.scalars(5, {"gen_loss": 0.25, "psnr": 12.5}, images_per_step=8)
  reporter.extra_scalars(5, {"eval_psnr": 14.75})
  grid = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  png_path = reporter.images(5, "reconstruction", grid)
  reporter.close()

  acc = read_events(workdir)
  assert [(e.step, e.value) for e in acc.Scalars("gen_loss")] == [(1, 0.5), (5, 0.25)]
  assert [(e.step, e.value) for e in acc.Scalars("psnr")] == [(1, 11.0), (5, 12.5)]
  assert [(e.step, e.value) for e in acc.Scalars("eval_psnr")] == [(5, 14.75)]
  # Throughput starts after the first (compiling) step: none at step 1.
  assert [e.step for e in acc.Scalars("steps_per_sec")] == [5]
  assert [e.step for e in acc.Scalars("images_per_sec")] == [5]
  [image] = acc.Images("reconstruction")
  assert (image.step, image.width, image.height) == (5, 30, 20)
  decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
  np.testing.assert_array_equal(decoded, grid)
  assert png_path == os.path.join(runs.images_dir(workdir), "reconstruction_00000005.png")
  np.testing.assert_array_equal(np.asarray(Image.open(png_path)), grid)


_NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[2] == "blocked":
      sys.modules["tensorflow"] = None    # as if TensorFlow were not installed
    import numpy as np
    from gigatok_jax.train import reporting
    r = reporting.Reporter(sys.argv[1], total_steps=3, start_step=0, progress=True, terminal=False)
    r.step(1, compiled=True)
    r.scalars(1, {"loss": 2.0}, images_per_step=4)
    r.images(1, "grid", np.zeros((6, 4, 3), np.uint8))
    r.close()
    if sys.argv[2] == "blocked":
      from tensorboard.backend.event_processing import event_accumulator as ea
      acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.IMAGES: 0})
      acc.Reload()
      print("READ", acc.Scalars("loss")[0].value, acc.Images("grid")[0].height)
    print("MODULES", sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None}
                            & {"tensorflow", "tensorflow_datasets", "clu"}))
""")


@pytest.mark.parametrize("mode", ["installed", "blocked"])
def test_reporter_needs_no_tensorflow(tmp_path, mode):
  """With TensorFlow importable the reporter still never imports it; with it blocked, the event
  file is written and TensorBoard's reader (its TF stub) reads it back."""
  proc = subprocess.run([sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path), mode], cwd=REPO,
                        env=subprocess_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "MODULES []" in proc.stdout, proc.stdout
  if mode == "blocked":
    assert "READ 2.0 6" in proc.stdout, proc.stdout
  assert "\r" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------- console
def run_fake_loop(reporter, clock, *, total, log_every, first_step_s=100.0, step_s=1.0):
  """The loop's reporting calls (train/loop.py); a slow first step stands in for the compile."""
  for step in range(1, total + 1):
    clock.advance(first_step_s if step == 1 else step_s)
    reporter.step(step, compiled=step == 1)
    if step % log_every == 0 or step == total or step == 1:
      reporter.scalars(step, {"gen_loss": 1.0 / step, "psnr": 10.0 + step}, images_per_step=8)


def test_plain_lines_off_a_terminal(tmp_path, capsys):
  clock = FakeClock()
  reporter = reporting.Reporter(str(tmp_path), total_steps=20, start_step=0, progress=True,
                                log_keys=("gen_loss", "psnr"), labels={"psnr": "train-batch PSNR"},
                                clock=clock)   # pytest's stdout is not a terminal
  assert reporter.bar is None
  run_fake_loop(reporter, clock, total=20, log_every=5)
  reporter.close()
  out = capsys.readouterr()
  assert "\r" not in out.out + out.err
  lines = [line for line in out.out.splitlines() if "] step " in line]
  assert [line.split("] ")[1].split(":")[0] for line in lines] == \
      ["step 1", "step 5", "step 10", "step 15", "step 20"]
  assert "train-batch PSNR 15" in lines[1] and "gen_loss 0.2" in lines[1]
  assert "25% of 20 steps" in lines[1]


def test_eta_leaves_out_the_compile(tmp_path):
  clock = FakeClock()
  reporter = reporting.Reporter(str(tmp_path), total_steps=11, start_step=0, progress=False,
                                log_keys=("gen_loss",), clock=clock)
  clock.advance(100.0)                      # the first step compiles for 100 s
  reporter.step(1, compiled=True)
  assert reporter.clock.eta_seconds(1, 11) is None
  assert "no ETA yet" in reporter.plain_line(1, reporter.scalars(1, {"gen_loss": 1.0}, 8))
  for step in (2, 3):
    clock.advance(2.0)                      # then 2 s per step
    reporter.step(step)
  assert reporter.clock.eta_seconds(3, 11) == pytest.approx(16.0)     # 8 steps left at 2 s
  values = reporter.scalars(3, {"gen_loss": 0.5}, images_per_step=8)
  assert values["steps_per_sec"] == pytest.approx(0.5)
  assert values["images_per_sec"] == pytest.approx(4.0)
  line = reporter.plain_line(3, values)
  assert line.startswith("step 3: gen_loss 0.5 | ") and line.endswith("0.5 steps/s, ETA 0:00:16")
  clock.advance(60.0)                       # a new loss phase compiles: left out too
  reporter.step(4, compiled=True)
  clock.advance(2.0)
  reporter.step(5)
  assert reporter.clock.eta_seconds(5, 11) == pytest.approx(12.0)
  reporter.close()


def test_terminal_bar_shows_our_eta(tmp_path):
  clock = FakeClock()
  reporter = reporting.Reporter(str(tmp_path), total_steps=11, start_step=0, progress=True,
                                log_keys=("gen_loss",), terminal=True, clock=clock)
  assert reporter.bar is not None
  run_fake_loop(reporter, clock, total=3, log_every=5, step_s=2.0)
  assert "ETA 0:00:16" in reporter.bar.postfix and "gen_loss" in reporter.bar.postfix
  assert "remaining" not in reporter.bar.bar_format and "rate" not in reporter.bar.bar_format
  reporter.close()


def test_plain_progress_lines(capsys):
  clock = FakeClock()
  bar = console.PlainProgress(total=10, desc="eval", unit="batch", interval_s=5.0, clock=clock)
  clock.advance(50.0)       # the first batch compiles
  bar.update(1)
  for _ in range(9):
    clock.advance(1.0)
    bar.update(1)
  bar.close()
  out = capsys.readouterr().out
  assert "\r" not in out
  lines = [line.split("] ")[1] for line in out.splitlines()]
  assert lines == ["eval: 6/10 batch, 1 batch/s, ETA 0:00:04"]


# ------------------------------------------------------------------------------------- final line
def test_final_line_names_the_eval_psnr_and_the_grids_folder(tmp_path):
  from gigatok_jax.train.tokenizer import TokenizerHooks
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict({"total_steps": 10})
  hooks = TokenizerHooks(types.SimpleNamespace(config=config))
  rng = np.random.default_rng(0)
  hooks.eval_images = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  hooks.reconstruct = lambda params, images: (np.clip(images + 0.1, -1, 1),)
  hooks.images_dir = runs.images_dir(workdir)
  reporter = reporting.Reporter(workdir, total_steps=10, start_step=9, progress=False)
  state = types.SimpleNamespace(ema_params=None, gen_params={})
  value = hooks.write_grid(state, 10, reporter)
  reporter.close()
  line = reporting.final_line(10, 10, hooks.final_line({"psnr": 12.731, "codebook_usage": 0.5}))
  assert line.startswith(f"done: step 10 of 10, eval PSNR {value:.2f} dB on 4 fixed eval images; ")
  assert "train-batch PSNR 12.73 dB" in line
  assert line.endswith(f"grids in {hooks.images_dir}/")
  assert os.path.exists(os.path.join(hooks.images_dir, "reconstruction_00000010.png"))
  # Stopped before the end: the eval PSNR says which step it is from.
  assert reporting.final_line(7, 10, "x").startswith("stopped: step 7 of 10")
  hooks.last_eval = (5, value)
  assert "on 4 fixed eval images (at step 5)" in hooks.final_line({"psnr": 1, "codebook_usage": 1})


# ---------------------------------------------------------------------------------- [tfds] extra
def test_tfds_source_without_the_extra_is_one_config_line(monkeypatch):
  from gigatok_jax.data import pipeline
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  cfg = pipeline.default_data_config()
  cfg.source = "tfds"
  with pytest.raises(ConfigError) as info:
    pipeline.make_source(cfg, "train")
  message = str(info.value)
  assert info.value.key == "data.source"
  assert "pip install -e '.[tfds]'" in message and "TensorFlow Datasets" in message
  assert "\n" not in message


def test_imagenet_prepare_without_the_extra_is_one_config_line(tmp_path, monkeypatch):
  """Said before the missing tar files: installing the extra is quicker than downloading them."""
  from gigatok_jax.data import prepare
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ConfigError) as info:
    prepare.prepare_imagenet2012(str(tmp_path), str(tmp_path / "out"))
  assert info.value.key == "data.prepare_source"
  assert "pip install -e '.[tfds]'" in str(info.value) and "\n" not in str(info.value)
