"""Fault injection on the real command line: kill -9 at random moments (mid-step, mid-save, during
compile or restore), SIGTERM, and damaged checkpoints; prints one JSON object.

  python bench/faults.py [--kills 6] [--steps 24] [--every 3] [--seed 0] [--workdir DIR]

1. A reference run trains `--steps` steps of configs/demo.py:tiny uninterrupted.
2. The same command is started again and again in a second workdir; every start but the last is
   killed with SIGKILL after a random delay (0.5 s to the expected time of the work left: start-up
   plus the unsaved steps at the reference run's pace), so kills land anywhere, including during
   compile, restore and while a checkpoint is being written. The final state must equal the
   reference bit for bit; "steps lost" per kill = last step printed before it - step resumed from.
3. SIGTERM during training: exit status 75 and a checkpoint at the printed step.
4. Each kind of damage (4 KB overwritten with the size kept, truncated file, deleted file, missing
   commit marker, missing metadata item, missing checksums) is done to the newest checkpoint of a
   copy of the finished run, which then trains two more steps: the damage must be reported in one
   warning line and the run must resume from the step before.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESUMED = re.compile(r"resuming from checkpoint step (\d+)")
STEP = re.compile(r"\] step (\d+):")


def command(workdir: str, steps: int, every: int) -> list[str]:
  return [sys.executable, "-m", "gigatok_jax.main", "--config=configs/demo.py:tiny",
          f"--workdir={workdir}", "--noprogress", f"--config.total_steps={steps}",
          f"--config.checkpoint_every_steps={every}", "--config.log_every_steps=1",
          "--config.image_every_steps=100000", "--config.max_checkpoints_to_keep=3"]


def env() -> dict:
  out = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out.setdefault("JAX_PLATFORMS", "cpu")
  return out


def run(cmd, *, kill_after: float | None = None, sig=signal.SIGKILL, on_line=None):
  """Runs `cmd`; sends `sig` after `kill_after` s (or when `on_line(line)` is true). Returns
  (exit status, output)."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines: queue.Queue = queue.Queue()
  reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
  reader.start()
  start, out = time.time(), []
  while proc.poll() is None or reader.is_alive():
    try:
      line = lines.get(timeout=0.05)
    except queue.Empty:
      line = None
    if line is not None:
      out.append(line)
    fire = (kill_after is not None and time.time() - start > kill_after) or (
        on_line is not None and line is not None and on_line(line))
    if fire and proc.poll() is None:
      proc.send_signal(sig)
      kill_after, on_line = None, None
  reader.join()
  while not lines.empty():
    out.append(lines.get())
  return proc.wait(), "".join(out)


def final_state(workdir: str) -> list[np.ndarray]:
  # gigatok_jax first: its import sets JAX's platform before jax starts (absent_tpu.py).
  from gigatok_jax import checkpointing  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every_steps=1)
  step = ckpt.latest_step()
  ckpt.close()
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def saved_step(workdir: str) -> int:
  """The newest step with its checksums in `workdir` (0 if none): where a rerun resumes."""
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in (os.listdir(directory) if os.path.isdir(directory) else [])
           if n.isdigit() and os.path.exists(os.path.join(directory, n, "checksums.json"))]
  return max(steps, default=0)


def same(a, b) -> bool:
  return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
                                  for x, y in zip(a, b))


def largest_array_file(step_dir: str) -> str:
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.path.basename(d) == "d"]
  return max(files, key=os.path.getsize)


def damage(step_dir: str, kind: str) -> None:
  if kind == "overwrite_4kb":
    path = largest_array_file(step_dir)
    with open(path, "r+b") as f:
      size = os.path.getsize(path)
      f.seek(max(0, size // 2 - 2048))
      f.write(os.urandom(min(4096, size)))
  elif kind == "truncate":
    path = largest_array_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif kind == "delete":
    os.remove(largest_array_file(step_dir))
  elif kind == "no_commit_marker":
    os.remove(os.path.join(step_dir, "commit_success.txt"))
  elif kind == "no_meta":
    shutil.rmtree(os.path.join(step_dir, "meta"))
  elif kind == "no_checksums":
    os.remove(os.path.join(step_dir, "checksums.json"))
  else:
    raise ValueError(kind)


DAMAGE = ("overwrite_4kb", "truncate", "delete", "no_commit_marker", "no_meta", "no_checksums")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=6)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--every", type=int, default=3, help="checkpoint_every_steps")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--damage", default=",".join(DAMAGE))
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = args.workdir or tempfile.mkdtemp(prefix="gigatok_faults_")
  began = time.time()

  ref_dir = os.path.join(root, "reference")
  t0 = time.time()
  first_step_at = []

  def note_first_step(line: str) -> bool:
    if STEP.search(line) and not first_step_at:
      first_step_at.append(time.time() - t0)
    return False
  code, out = run(command(ref_dir, args.steps, args.every), on_line=note_first_step)
  reference_s = time.time() - t0
  startup_s = first_step_at[0] if first_step_at else reference_s / 2
  step_s = (reference_s - startup_s) / args.steps
  if code != 0:
    sys.exit(f"reference run failed ({code}):\n{out[-3000:]}")
  reference = final_state(ref_dir)

  # kill -9 at random moments, then one run to the end.
  faulty = os.path.join(root, "killed")
  kills, lost = [], []
  for _ in range(args.kills):
    # A delay within the expected time of the work left (start-up + the steps not yet saved, at
    # the reference run's pace), so that every kill interrupts something.
    remaining = args.steps - saved_step(faulty)
    if remaining <= 0:
      break     # a run outlived its kill and finished: nothing is left to interrupt
    delay = rng.uniform(0.5, startup_s + remaining * step_s)
    code, out = run(command(faulty, args.steps, args.every), kill_after=delay)
    printed = [int(s) for s in STEP.findall(out)]
    kills.append({"after_s": round(delay, 2), "status": code,
                  "last_step_printed": printed[-1] if printed else None,
                  "resumed_from": (int(RESUMED.findall(out)[-1]) if RESUMED.findall(out)
                                   else None)})
  code, out = run(command(faulty, args.steps, args.every))
  resumed = [int(s) for s in RESUMED.findall(out)]
  kills.append({"after_s": None, "status": code, "last_step_printed": args.steps,
                "resumed_from": resumed[-1] if resumed else None})
  # Steps lost by kill i: the last step it printed minus the step run i + 1 resumed from.
  for i in range(len(kills) - 1):
    after = kills[i + 1]["resumed_from"] or 0
    if kills[i]["last_step_printed"] is not None:
      lost.append(max(0, kills[i]["last_step_printed"] - after))
  bit_identical = code == 0 and same(final_state(faulty), reference)

  # SIGTERM after step 4: exit 75 and a checkpoint at the step it names.
  term_dir = os.path.join(root, "sigterm")
  code, out = run(command(term_dir, args.steps, 1000), sig=signal.SIGTERM,
                  on_line=lambda line: "] step 4:" in line)
  match = re.search(r"saved a checkpoint at step (\d+)", out)
  from gigatok_jax import checkpointing  # pylint: disable=import-outside-toplevel
  ckpt = checkpointing.Checkpointer(os.path.join(term_dir, "checkpoints"), save_every_steps=1)
  term_latest = ckpt.latest_step()
  ckpt.close()
  sigterm = {"status": code, "saved_step": int(match.group(1)) if match else None,
             "latest_checkpoint": term_latest,
             "ok": code == 75 and match is not None and term_latest == int(match.group(1))}

  # Damage to the newest checkpoint of a finished run; two more steps must resume from the one
  # before, with one warning line naming the damaged step.
  damaged = {}
  for kind in [k for k in args.damage.split(",") if k]:
    work = os.path.join(root, f"damage_{kind}")
    shutil.copytree(ref_dir, work)
    damage(os.path.join(work, "checkpoints", str(args.steps)), kind)
    code, out = run(command(work, args.steps + 2, args.every))
    resumed = [int(s) for s in RESUMED.findall(out)]
    warnings = [line for line in out.splitlines() if "warning:" in line]
    previous = (args.steps - 1) // args.every * args.every
    damaged[kind] = {
        "status": code, "resumed_from": resumed[-1] if resumed else None,
        "warning": warnings[0][:300] if warnings else None,
        "caught": (code == 0 and resumed[-1:] == [previous] and len(warnings) == 1
                   and f"step {args.steps}" in warnings[0])}

  print(json.dumps({
      "config": "demo:tiny", "steps": args.steps, "checkpoint_every_steps": args.every,
      "reference_run_s": round(reference_s, 1),
      "kills": kills, "resumes_tried": len(kills) - 1,
      "bit_identical": bit_identical,
      "max_steps_lost": max(lost) if lost else 0,
      "sigterm": sigterm,
      "damage": damaged,
      "damaged_caught": sum(d["caught"] for d in damaged.values()),
      "damage_cases": len(damaged),
      "wall_s": round(time.time() - began, 1),
  }, indent=1))
  if not args.workdir:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
