"""bench/faults.py end to end at its smallest: a reference run, one kill -9 and its resume,
SIGTERM, and one kind of damage; the JSON must report what the unit tests guarantee."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_faults_bench_smallest(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "faults.py"), "--kills=1", "--steps=4",
       "--every=2", "--damage=overwrite_4kb", f"--workdir={tmp_path}"],
      cwd=REPO, env=subprocess_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
  out = json.loads(proc.stdout)
  assert out["resumes_tried"] == 1 and out["bit_identical"] is True
  # A kill while step 4 is being written (at step 5) resumes from 2: under two intervals lost.
  assert 0 <= out["max_steps_lost"] < 4
  assert out["sigterm"]["ok"] is True and out["sigterm"]["status"] == 75
  assert out["damage"]["overwrite_4kb"]["caught"] is True
  assert out["damage"]["overwrite_4kb"]["resumed_from"] == 2
  assert out["damaged_caught"] == out["damage_cases"] == 1
