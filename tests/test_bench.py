"""bench/tokenizer_step.py runs on the tiny recipe and prints one sane JSON object.

Never asserts on wall-clock values (the CPU is shared): only that they are present and positive.
"""

import json
import os
import subprocess
import sys

from helpers import REPO, subprocess_env


def test_tokenizer_step_bench_tiny():
  # One CPU device, conftest's XLA settings and compilation cache (speed is not checked here).
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "tokenizer_step.py"),
       "--config=" + os.path.join(REPO, "configs", "tokenizer_ss.py") + ":tiny",
       "--steps=2", "--warmup=1", "--peak_sizes=512", "--peak_runs=3"],
      cwd=REPO, env=subprocess_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout)

  assert out["config"] == "tokenizer_ss:tiny"
  assert out["batch_size"] == 4 and out["image_size"] == 64
  assert out["dtype"] == "float32" and out["gan"] is False and out["aux"] is False
  assert out["platform"] == "cpu" and out["device_count"] == 1
  assert len(out["step_time_samples_s"]) == 2
  for key in ("step_time_s", "step_time_min_s", "images_per_s", "compile_time_s",
              "peak_flops_per_s", "achieved_flops_per_s_per_device"):
    assert out[key] > 0, key
  assert out["step_time_min_s"] <= out["step_time_s"]
  # The tiny step is ~15 GFLOP (forward + backward); XLA's count must be in that range.
  assert 1e9 < out["flops_per_step"] < 1e11
  assert out["flops_per_step"] == out["flops_per_step_per_device"]
  assert out["mfu"] > 0
  mem = out["memory_per_device"]
  assert mem is not None
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes"):
    assert mem[key] > 0, key
  # The state is donated: most of the argument bytes are aliased to outputs.
  assert mem["alias_bytes"] > 0.5 * mem["argument_bytes"]
  # The parameters alone (float32) are part of the arguments.
  assert mem["argument_bytes"] > 4 * out["num_params"]


def test_compare_refuses_a_directory_that_is_not_the_official_checkout(tmp_path):
  """bench/compare.py imports the official code from --official; anything else is one line, 2."""
  for extra, culprit in [([f"--official={tmp_path}"], "--official"),
                         ([f"--official={tmp_path}", "--rows=gpt_trian"], "--rows")]:
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "compare.py"), *extra],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {culprit}"), proc.stderr
