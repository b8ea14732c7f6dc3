"""The real training loop (train/loop.py) end to end on a tiny config: exact resume, SIGTERM, outputs,
and the reconstruct / eval modes on its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gigatok_jax import checkpointing, parallel
from gigatok_jax.config import validate
from gigatok_jax.data import pipeline
from gigatok_jax.modes import reconstruct
from gigatok_jax.train import loop
from gigatok_jax.train.tokenizer import TokenizerTask
from helpers import REPO, load_recipe, subprocess_env

ONE_DEVICE = jax.devices()[:1]


def tiny_config(total_steps=6):
  config = load_recipe("demo", "tiny")
  config.total_steps = total_steps
  config.checkpoint_every_steps = 100
  config.image_every_steps = 100
  config.loss.disc_weight = 0.5            # the demo recipe leaves the GAN off
  config.loss.disc_start_step = 3          # the GAN switches on mid-run: every phase runs
  config.loss.aux_loss_end = 2
  config.loss.shortcut_reconstruction = True
  config.optim.ema_decay = 0.9
  config.mesh.data = 1
  validate.validate(config, num_devices=1)
  return config


def leaves(state):
  return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  state = loop.train(tiny_config(), workdir, progress=False, devices=ONE_DEVICE)
  return workdir, state


def test_resume_is_bit_identical(straight_run, tmp_path):
  _, straight = straight_run
  workdir = str(tmp_path / "resumed")
  half = loop.train(tiny_config(), workdir, progress=False, stop_at_step=3,
                                 devices=ONE_DEVICE)
  assert int(half.step) == 3
  assert checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1).latest_step() == 3
  # The GAN starts at step 3 (disc_start_step): the discriminator was not stepped before it.
  task = TokenizerTask(tiny_config(), parallel.make_mesh(tiny_config().mesh, ONE_DEVICE))
  for x, y in zip(leaves(task.init_state().disc_params), leaves(half.disc_params)):
    np.testing.assert_array_equal(x, y)
  assert int(jax.device_get(half.disc_opt[1][0].count)) == 0
  resumed = loop.train(tiny_config(), workdir, progress=False, devices=ONE_DEVICE)
  assert int(resumed.step) == 6
  a, b = leaves(straight), leaves(resumed)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # The discriminator was stepped after the GAN start, and EMA differs from the raw weights.
  assert not np.array_equal(np.asarray(straight.ema_params["decoder"]["conv_out"]["kernel"]),
                            np.asarray(straight.gen_params["decoder"]["conv_out"]["kernel"]))


def test_the_phases_a_run_enters_compile_ahead():
  """Steps 0-1 aux losses, 2 plain, 3-5 GAN: later phases compile in the background at the start."""
  from gigatok_jax.train.tokenizer import Phase
  task = TokenizerTask(tiny_config(), parallel.make_mesh(tiny_config().mesh, ONE_DEVICE))
  assert task.phase(0) == Phase(gan=False, aux=True)
  assert loop.later_phases(task, 0, 6) == [Phase(gan=False, aux=False), Phase(gan=True, aux=False)]
  assert loop.later_phases(task, 2, 6) == [Phase(gan=True, aux=False)]
  assert loop.later_phases(task, 0, 3) == [Phase(gan=False, aux=False)]   # stop_at_step=3
  assert loop.later_phases(task, 3, 6) == []


def test_outputs_written(straight_run):
  workdir, _ = straight_run
  images = os.listdir(os.path.join(workdir, "images"))
  assert "reconstruction_00000000.png" in images      # untrained baseline grid
  assert "reconstruction_00000006.png" in images
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_reconstruct_mode(straight_run):
  workdir, _ = straight_run
  result = reconstruct.run(tiny_config(), workdir, devices=ONE_DEVICE)
  assert result["step"] == 6 and result["num_images"] == 4
  assert 5.0 < result["psnr"] < 60.0
  assert 1 <= result["codes_used"] <= 512
  assert os.path.exists(result["grid"])
  from PIL import Image
  grid = np.asarray(Image.open(result["grid"]))
  assert grid.ndim == 3 and grid.shape[0] > 2 * 64      # originals above reconstructions
  with open(os.path.join(workdir, "reconstruct", "metrics_00000006.json")) as f:
    assert json.load(f)["psnr"] == pytest.approx(result["psnr"])


def test_eval_mode_streams_the_eval_split(straight_run):
  """--mode=eval: metrics over eval.num_images images (padding excluded) in the results JSON."""
  from gigatok_jax.metrics import image as image_metrics
  from gigatok_jax.modes import eval_tokenizer as tokenizer_eval
  workdir, _ = straight_run
  config = tiny_config()
  config.eval.num_images, config.eval.batch_size = 10, 8      # two batches, the second padded
  result = tokenizer_eval.run(config, workdir, progress=False, devices=ONE_DEVICE)
  assert result["step"] == 6 and result["num_images"] == 10
  assert result["tokens_per_image"] == 128                    # the demo's 128 latent tokens
  assert 5.0 < result["psnr"] < 60.0 and 0.0 < result["ssim"] <= 1.0
  assert 0 < result["codebook_usage"] <= 1 and 1 <= result["code_perplexity"] <= result["codes_used"]
  with open(result["json"]) as f:
    assert json.load(f)["psnr"] == pytest.approx(result["psnr"])
  # Perplexity of a histogram: k equally used codes -> k.
  stats = tokenizer_eval.code_statistics(np.array([5, 5, 5, 5, 0, 0, 0, 0]))
  assert stats["code_perplexity"] == pytest.approx(4.0) and stats["codebook_usage"] == 0.5
  assert image_metrics.PSNR_CAP_DB > 140


def test_eval_mode_rfid_and_lpips_plumbing(straight_run, tmp_path, monkeypatch):
  """rFID against the originals' own statistics and against a reference .npz holding those very
  statistics agree; padding rows never reach the statistics; the reference's sha256 is recorded.
  Features come from a fixed random projection here (the Inception port has its own parity test)."""
  from gigatok_jax import images as image_lib
  from gigatok_jax.metrics import evaluator, fid
  from gigatok_jax.modes import eval_tokenizer as tokenizer_eval
  projection = np.random.default_rng(0).normal(size=(64 * 64 * 3, 32)).astype(np.float32)

  def fake_pool(images):      # uint8 images, as the network gets them
    return np.asarray(images, np.float32).reshape(len(images), -1) @ projection

  def fake_measure(config, mesh):
    assert config.eval.inception_path == "inception.safetensors"
    return lambda images: evaluator.Measured(fake_pool(images), fake_pool(images)[:, :5],
                                             fake_pool(images)[:, :10])
  monkeypatch.setattr(tokenizer_eval, "_measure", fake_measure)
  workdir, _ = straight_run
  config = tiny_config()
  config.eval.update(num_images=6, batch_size=4, inception_path="inception.safetensors")
  # LPIPS-VGG with random weights of the real shapes (the port has its own parity tests).
  from flax import nnx
  from gigatok_jax.convert import lpips as lpips_convert
  from gigatok_jax.convert import weight_files
  from gigatok_jax.models.lpips import LPIPS
  config.teachers.lpips_path = str(tmp_path / "lpips.safetensors")
  weight_files.save_flat(config.teachers.lpips_path,
                         weight_files.flatten_module(LPIPS(rngs=nnx.Rngs(0))),
                         metadata={"model": lpips_convert.MODEL_NAME})
  own = tokenizer_eval.run(config, workdir, progress=False, devices=ONE_DEVICE)
  assert own["rfid"] > 0 and own["rfid_reference"] == "the evaluated originals"
  assert own["sfid"] > 0 and own["protocol"] == "adm" and own["inception_score"] >= 1.0
  assert 0 <= own["precision"] <= 1 and 0 <= own["recall"] <= 1
  assert own["lpips"] > 0
  it = pipeline.make_eval_iterator(config.data, batch_size=6, num_images=6)
  batch = next(iter(it))
  originals = image_lib.to_uint8(batch["image"][batch["mask"]])
  stats = fid.FeatureStats().update(fake_pool(originals))
  spatial = fid.FeatureStats().update(fake_pool(originals)[:, :5])
  ref = str(tmp_path / "ref.npz")
  sha = fid.write_reference(ref, mu=stats.mu, sigma=stats.sigma, mu_s=spatial.mu,
                            sigma_s=spatial.sigma, images=originals)
  config.eval.fid_reference = ref
  other = tokenizer_eval.run(config, workdir, progress=False, devices=ONE_DEVICE)
  assert other["rfid"] == pytest.approx(own["rfid"], rel=1e-6)
  assert other["sfid"] == pytest.approx(own["sfid"], rel=1e-6)
  assert (other["precision"], other["recall"]) == (own["precision"], own["recall"])
  assert other["rfid_reference"] == {"path": ref, "sha256": sha}


def _run_until(workdir, line_marker, *, delay_s=0.0, extra=()):
  """Starts the demo:tiny CLI, sends SIGTERM once `line_marker` is printed (None: after `delay_s`
  from the start), returns (exit status, output)."""
  cmd = [sys.executable, "-m", "gigatok_jax.main", "--config=configs/demo.py:tiny",
         f"--workdir={workdir}", "--noprogress", "--config.total_steps=100000",
         "--config.checkpoint_every_steps=100000", "--config.image_every_steps=100000", *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.time() + 300
  try:
    if line_marker is None:
      time.sleep(delay_s)
      proc.send_signal(signal.SIGTERM)
    else:
      for line in proc.stdout:
        lines.append(line)
        if line_marker in line:
          proc.send_signal(signal.SIGTERM)
          break
        assert time.time() < deadline, "".join(lines[-20:])
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  return proc.returncode, "".join(lines) + out


def test_sigterm_saves_checkpoint_and_exits_with_the_preempted_status(tmp_path):
  from gigatok_jax import preemption
  workdir = str(tmp_path / "preempted")
  code, text = _run_until(workdir, "step 2:")
  assert code == preemption.EXIT_PREEMPTED == 75, text[-3000:]
  assert "Traceback" not in text
  last = text.strip().splitlines()[-1]
  assert last.startswith("preempted: SIGTERM received: saved a checkpoint at step "), last
  step = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1).latest_step()
  assert step is not None and step >= 2 and f"step {step} in" in last


@pytest.mark.parametrize("moment", ["importing", "before the loop"])
def test_sigterm_during_start_up_exits_with_the_preempted_status(tmp_path, moment):
  workdir = str(tmp_path / "early")
  if moment == "importing":
    code, text = _run_until(workdir, None, delay_s=0.3)
  else:   # the mesh line comes before the restore / model building / first compile
    code, text = _run_until(workdir, "mesh {")
  assert code == 75, text[-3000:]
  assert "Traceback" not in text
  assert text.strip().splitlines()[-1].startswith("preempted: SIGTERM received"), text[-2000:]


def test_nothing_to_train_says_so(straight_run, capsys):
  workdir, straight = straight_run
  capsys.readouterr()
  again = loop.train(tiny_config(total_steps=4), workdir, progress=False, devices=ONE_DEVICE)
  assert int(again.step) == 6
  out = capsys.readouterr().out
  assert "nothing to train: resumed at step 6 and total_steps is 4" in out


def test_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  """NaN appears at step 4 (poisoned weights); checkpoints every 2 steps. The run stops with one
  Diverged line naming the losses, and step 2 stays the latest checkpoint (4 is never saved)."""
  from gigatok_jax.errors import Diverged
  real = TokenizerTask.jitted_train_step

  def poisoned(self, phase):
    step_fn = real(self, phase)

    def run(state, batch, *args):
      state, metrics = step_fn(state, batch, *args)
      if int(state.step) >= 4:
        state = state.replace(gen_params=jax.tree.map(lambda x: x * np.nan, state.gen_params))
        metrics = dict(metrics, gen_loss=metrics["gen_loss"] * np.nan)
      return state, metrics
    run.lower = step_fn.lower
    return run
  monkeypatch.setattr(TokenizerTask, "jitted_train_step", poisoned)
  config = tiny_config(total_steps=8)
  config.checkpoint_every_steps = 2
  config.log_every_steps = 100
  workdir = str(tmp_path / "nan")
  with pytest.raises(Diverged) as info:
    loop.train(config, workdir, progress=False, devices=ONE_DEVICE)
  message = str(info.value)
  assert message.startswith("training diverged by step 4: gen_loss=nan"), message
  assert "checkpoint step 2 stays the latest" in message
  assert checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1).all_steps() == [2]


def test_a_failed_background_save_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
  """What a full disk does to an asynchronous save, without filling a disk: Orbax's background
  write of step 2 fails. The run stops on the next step with one line naming step 2."""
  from gigatok_jax.errors import CheckpointError
  import orbax.checkpoint as ocp
  real_wait = ocp.CheckpointManager.wait_until_finished
  saved = []

  def failing_wait(self):
    real_wait(self)
    if saved == [2]:          # once step 2's save has been handed to the background
      raise OSError(28, "No space left on device")
  real_save = ocp.CheckpointManager.save

  def recording_save(self, step, *args, **kwargs):
    result = real_save(self, step, *args, **kwargs)
    saved.append(step)
    return result
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)
  monkeypatch.setattr(ocp.CheckpointManager, "save", recording_save)
  config = tiny_config(total_steps=8)
  config.checkpoint_every_steps = 2
  with pytest.raises(CheckpointError) as info:
    loop.train(config, str(tmp_path / "full"), progress=False, devices=ONE_DEVICE)
  message = str(info.value)
  assert "saving checkpoint step 2 to" in message and "No space left on device" in message
  assert saved == [2]        # stopped before the next checkpoint step


def test_loss_phases_and_aux_metrics():
  config = tiny_config()
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, ONE_DEVICE))
  assert [task.phase(s) for s in range(5)] == [
      (False, True), (False, True), (False, False), (True, False), (True, False)]
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
           "label": np.zeros((4,), np.int32)}
  with jax.set_mesh(task.mesh):
    state = task.init_state()
    _, aux = task.jitted_train_step((False, True))(state, batch, {})
    state = task.init_state()
    _, plain = task.jitted_train_step((False, False))(state, batch, {})
  assert {"feature_rec_loss", "shortcut_rec_loss"} <= set(aux)
  assert not {"feature_rec_loss", "shortcut_rec_loss", "disc_loss"} & set(plain)
  extra = float(aux["feature_rec_loss"]) + float(aux["shortcut_rec_loss"])
  assert float(aux["gen_loss"]) == pytest.approx(float(plain["gen_loss"]) + extra, rel=1e-4)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_swallowed_during_start_up_still_stops_the_loop(capfd):
  """Python drops the exception a signal handler raises inside a `__del__` (CI once saw this in
  jax's gc callback: the run then trained on). The flag the handler set stops `deferred()`, and
  neither that exception nor a half-built object's failing destructor (CI saw a grain iterator's)
  prints an "Exception ignored" traceback above the run's one `preempted:` line."""
  import gc
  import os
  import sys
  from gigatok_jax import preemption

  class DiesWithSigterm:
    def __del__(self):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(10_000):   # the handler runs between bytecodes, here inside __del__
        pass

  class HalfBuilt:
    def __del__(self):
      return self._closed       # never set: its __init__ was interrupted

  previous = signal.getsignal(signal.SIGTERM)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = sys.__unraisablehook__    # Python's own: prints the traceback to stderr
  try:
    preemption.install()
    DiesWithSigterm()
    gc.collect()
    assert preemption.received(), "the handler did not run inside __del__"
    HalfBuilt()
    gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err
    with pytest.raises(preemption.Preempted, match="before training started"):
      with preemption.deferred():
        pytest.fail("the loop started after a SIGTERM")
  finally:
    signal.signal(signal.SIGTERM, previous)
    sys.unraisablehook = previous_hook
    preemption._received.clear()   # pylint: disable=protected-access
  with preemption.deferred():     # a later run in the same process starts afresh
    assert not preemption.received()
