"""Multi-process training on one machine: 2 local processes x 2 CPU devices = one 4-device mesh.

Checks that a 1-process checkpoint resumes in 2 processes on the 1-process trajectory and a
2-process checkpoint in 1 process on the 2-process trajectory, that only process 0 writes logs and
images, and that a dead process makes the other exit with an error instead of hanging.
"""

import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gigatok_jax import checkpoint_integrity, checkpointing, distributed, parallel
from gigatok_jax.config import validate
from gigatok_jax.errors import ConfigError
from gigatok_jax.train.tokenizer import TokenizerTask
from helpers import REPO, load_recipe, subprocess_env

# The tiny demo recipe (one loss phase all run: one compile) on a data=2 x fsdp=2 mesh. The recipe
# warms up for 100 steps, so the learning rate does not depend on total_steps: a run resumed to 3
# steps follows the same schedule as a 2-step run or an endless one.
OVERRIDES = ["--config.checkpoint_every_steps=2", "--config.image_every_steps=100",
             "--config.optim.ema_decay=0.9", "--config.mesh.data=2", "--config.mesh.fsdp=2"]
# Not bit-identical across process counts: the 2-process global batch holds the same images in
# another row order (process p reads stream positions p, p + 2, ...: data/pipeline.py) and gloo
# all-reduces add in another order, so sums differ in the last bits. Adam turns those into full-size
# sign flips for the few weights whose gradient is ~0, hence a bound on the whole update instead of
# per element: measured 0.6-1.2% (||params_a - params_b|| / ||params_a - init||) after 2 + 2 steps
# against a straight run, 0.4-0.5% after 1 + 1 steps.
MAX_RELATIVE_UPDATE_DIFF = 0.05


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, steps, *, processes, extra=(), heartbeat_s=10):
  """Starts the CLI as `processes` local processes with 4 CPU devices in all.

  Returns [(Popen, log path)]: output goes to files, since a full pipe that nobody reads would
  block one process and, through the collectives, all of them.
  """
  cmd = [sys.executable, "-m", "gigatok_jax.main", "--config=configs/demo.py:tiny",
         f"--workdir={workdir}", "--noprogress", f"--config.total_steps={steps}", *OVERRIDES,
         *extra]
  env = subprocess_env(JAX_NUM_CPU_DEVICES=4 // processes)
  if processes > 1:
    cmd += [f"--config.distributed.coordinator_address=127.0.0.1:{free_port()}",
            f"--config.distributed.num_processes={processes}",
            f"--config.distributed.heartbeat_timeout_s={heartbeat_s}",
            "--config.distributed.initialization_timeout_s=300"]
  os.makedirs(workdir, exist_ok=True)
  out = []
  for i in range(processes):
    log = os.path.join(os.path.dirname(os.path.abspath(workdir)),
                       f"{os.path.basename(workdir)}.{time.time_ns()}.process{i}.log")
    with open(log, "w") as f:
      ids = [f"--config.distributed.process_id={i}"] if processes > 1 else []
      out.append((subprocess.Popen(cmd + ids, cwd=REPO, env=env, stdout=f,
                                   stderr=subprocess.STDOUT), log))
  return out


def kill_all(procs) -> None:
  for p, _ in procs:
    p.kill()


def read(log: str) -> str:
  with open(log) as f:
    return f.read()


def finish(procs, timeout=300) -> list[str]:
  try:
    for p, _ in procs:
      p.wait(timeout=timeout)
  finally:
    for p, _ in procs:
      p.kill()
  outs = [read(log) for _, log in procs]
  for i, ((p, _), out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{out[-3000:]}"
  return outs


def train(workdir, steps, processes, extra=()):
  return finish(launch(workdir, steps, processes=processes, extra=extra))


@functools.cache
def tiny_task():
  """The 1-device task the checkpoints are restored and compared on (built once per module)."""
  config = load_recipe("demo", "tiny")
  config.mesh.data = 1
  config.optim.ema_decay = 0.9
  return TokenizerTask(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))


def restored(workdir, step):
  """Checkpoint `step`'s state, restored here on 1 device."""
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1)
  try:
    return ckpt.restore(tiny_task().abstract_state, step=step)
  finally:
    ckpt.close()


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def assert_same_run(reference, workdir, step):
  """`workdir`'s checkpoint `step` is on the trajectory of `reference` = (workdir, initial state)."""
  reference_dir, init = reference
  a, b = restored(reference_dir, step), restored(workdir, step)
  assert int(a.step) == int(b.step) == step
  # The data stream went on where the checkpoint left it (`step` global batches consumed).
  paths = glob.glob(os.path.join(workdir, "checkpoints", str(step), "data_iter", "process_*.json"))
  assert paths
  for path in paths:
    with open(path) as f:
      assert json.load(f) == {"next_index": step}, path
  for name in ("disc_params", "disc_stats"):               # no GAN in this recipe: untouched
    np.testing.assert_array_equal(flat(getattr(a, name)), flat(getattr(b, name)))
  for name in ("gen_params", "ema_params"):
    pa, pb, p0 = flat(getattr(a, name)), flat(getattr(b, name)), flat(getattr(init, name))
    ratio = np.linalg.norm(pa - pb) / np.linalg.norm(pa - p0)
    print(f"{name}: ||a - b|| / ||a - init|| = {ratio:.4f}")
    assert ratio < MAX_RELATIVE_UPDATE_DIFF, (name, ratio)


# A hybrid mesh: fsdp=2 inside each process ("slice"), the data axis across the 2 processes.
HYBRID = ["--config.mesh.data=1", "--config.mesh.dcn_data=2"]


def wait_for_commit(workdir, step, procs, timeout=600):
  """Waits until checkpoint `step` is complete (what `Checkpointer.latest_step` counts): committed
  by Orbax, then its checksums written by process 0."""
  step_dir = os.path.join(workdir, "checkpoints", str(step))
  start = time.time()
  while not (os.path.exists(os.path.join(step_dir, checkpointing._COMMIT_MARKER))
             and os.path.isdir(os.path.join(step_dir, checkpointing.META_ITEM))
             and os.path.isfile(os.path.join(step_dir, checkpoint_integrity.MANIFEST))):
    for i, (p, log) in enumerate(procs):
      assert p.poll() is None, f"process {i} exited with {p.returncode}:\n{read(log)[-3000:]}"
    assert time.time() - start < timeout, read(procs[0][1])[-3000:]
    time.sleep(0.2)


def kill_and_wait(procs, victim, timeout=120):
  """SIGKILLs process `victim`; returns (survivor's exit code, its log, seconds it took to exit)."""
  survivor = 1 - victim
  try:
    procs[victim][0].send_signal(signal.SIGKILL)
    killed = time.time()
    procs[survivor][0].wait(timeout=timeout)
    waited = time.time() - killed
  finally:
    for p, _ in procs:
      p.kill()
  print(f"survivor {survivor} exited with {procs[survivor][0].returncode} after {waited:.1f} s")
  return procs[survivor][0].returncode, read(procs[survivor][1]), waited


def assert_stopped_by_the_death(code, text, survivor):
  """The survivor exited non-zero with an error that names the cause, ours or JAX's."""
  ours = code in (1, 2) and f"error: process {survivor} of 2: " in text and "another process" in text
  # JAX's coordination service declares the dead task unhealthy after the heartbeat timeout and its
  # error poller aborts the survivor (SIGABRT) with this line; the callback that would let us print
  # our own line instead cannot be used from Python on jaxlib 0.10 (its absl::Status argument does
  # not convert: std::bad_cast). Which comes first is a race when the survivor was between
  # collectives, so both are accepted; either names the cause.
  jax_abort = code != 0 and "This most likely indicates that another task died" in text
  if survivor == 0:
    # Our line: exit 1 if the step's collective failed, 2 if the checkpoint save's did.
    assert ours or jax_abort, (code, text[-3000:])
  else:
    # The coordination service went with process 0: JAX's own error poller aborts (SIGABRT) first.
    assert jax_abort, (code, text[-3000:])


def kill_and_check(procs, victim) -> str:
  """Kills `victim`; the survivor must exit within 120 s with an error naming the cause. Returns
  the survivor's log."""
  code, text, waited = kill_and_wait(procs, victim)
  assert waited < 120
  assert_stopped_by_the_death(code, text, survivor=1 - victim)
  return text


def test_one_to_two_processes_and_back_and_a_death(tmp_path):
  """The checkpoint is topology-independent in both directions, and a death stops the survivor.

  1 process trains 2 steps (checkpoints 1 and 2). 2 processes resume its step 1 on the hybrid mesh
  and checkpoint every step: their step 2 must be on the 1-process trajectory (1 -> 2). Once their
  step 3 is committed process 1 is killed, and process 0 must exit with an error within seconds.
  Their step 2 then resumes in 1 process, whose step 3 must match theirs (2 -> 1).

  One 2-process launch serves all three checks: each launch compiles cold in both processes
  (~2 minutes of CI on 2 cores), while the second 1-process run reuses the first one's compile."""
  init = tiny_task().init_state()
  one = str(tmp_path / "one_process")
  train(one, 2, processes=1, extra=["--config.checkpoint_every_steps=1"])

  two = str(tmp_path / "two_processes")
  shutil.copytree(os.path.join(one, "checkpoints", "1"), os.path.join(two, "checkpoints", "1"))
  procs = launch(two, 100000, processes=2, heartbeat_s=5,
                 extra=HYBRID + ["--config.checkpoint_every_steps=1", "--config.image_every_steps=2"])
  try:
    wait_for_commit(two, 3, procs)
  except BaseException:
    kill_all(procs)
    raise
  text = kill_and_check(procs, victim=1)

  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in text
  assert "resuming from checkpoint step 1" in text
  assert "[gigatok" not in read(procs[1][1])          # process 1 prints nothing of its own
  events = [n for n in os.listdir(two) if n.startswith("events.out.tfevents")]
  assert len(events) == 1                              # one TensorBoard file: process 0's
  # Step 2's grid (step 4's too if process 0 got that far before the kill landed).
  assert "reconstruction_00000002.png" in os.listdir(os.path.join(two, "images"))
  step_dir = os.path.join(two, "checkpoints", "2")
  files = [n for n in os.listdir(os.path.join(step_dir, "data_iter")) if n.startswith("process_")]
  assert sorted(files) == ["process_0-of-2.json", "process_1-of-2.json"]
  # Process 0 wrote the arrays (Orbax OCDBT: one sub-store per writing process). Process 1 holds
  # only replicas here (the data axis spans the processes) of arrays under
  # checkpointing.REPLICA_PARALLEL_MIN_BYTES, which replica 0 writes whole.
  assert "ocdbt.process_0" in os.listdir(os.path.join(step_dir, "state"))
  assert_same_run((one, init), two, step=2)            # 1 -> 2 processes

  back = str(tmp_path / "one_process_again")
  shutil.copytree(step_dir, os.path.join(back, "checkpoints", "2"))
  train(back, 3, processes=1)
  assert_same_run((two, init), back, step=3)           # 2 -> 1 process


# The coordinator's death costs ~2 more minutes of the 15-minute CI budget on 2 cores; it runs with
# GIGATOK_SLOW_TESTS=1 (passed when written, 2026-11-23).
_SLOW = pytest.mark.skipif(not os.environ.get("GIGATOK_SLOW_TESTS"),
                           reason="slow multi-process case; set GIGATOK_SLOW_TESTS=1")


@_SLOW
def test_dead_coordinator_stops_the_other(tmp_path):
  """Killing the coordinator's process: the survivor exits non-zero within the heartbeat bound."""
  procs = launch(str(tmp_path / "run"), 100000, processes=2, heartbeat_s=5, extra=HYBRID)
  start = time.time()
  try:
    while "step 2:" not in read(procs[0][1]):           # process 0 logs: training runs
      assert procs[0][0].poll() is None and time.time() - start < 600, read(procs[0][1])[-3000:]
      time.sleep(0.5)
  except BaseException:
    kill_all(procs)
    raise
  kill_and_check(procs, victim=0)


def test_single_process_does_not_initialize(monkeypatch):
  for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
              "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(key, raising=False)
  assert distributed.cluster_env() is None
  assert not distributed.initialize(load_recipe("demo", "tiny"))
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.cluster_env() == "SLURM"


@pytest.mark.parametrize("key,value", [("num_processes", 0), ("process_id", 2),
                                       ("coordinator_address", "localhost"),
                                       ("heartbeat_timeout_s", 0)])
def test_bad_distributed_keys_are_named(key, value):
  config = load_recipe("demo", "tiny")
  config.distributed.num_processes = 2
  config.distributed[key] = value
  with pytest.raises(ConfigError, match=f"distributed.{key}"):
    validate.check_distributed(config.distributed)
