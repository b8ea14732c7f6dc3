"""bench/ar_sample.py runs on the tiny GPT recipe and prints one consistent JSON object.

Never asserts on wall-clock values (the CPU is shared): only that they are present, positive and
consistent with each other; the byte counts are checked against a closed-form count of the tiny GPT.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, load_recipe, subprocess_env


def _run_bench(*flags):
  # One CPU device, conftest's XLA settings and compilation cache (speed is not checked here).
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "ar_sample.py"),
       "--config=" + os.path.join(REPO, "configs", "gpt_b.py") + ":tiny",
       "--steps=2", "--warmup=1", "--copy_mib=16", "--copy_runs=3", *flags],
      cwd=REPO, env=subprocess_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)


def _expected_bytes(num_tokens, rows, weight_itemsize, cache_itemsize):
  """Closed-form bytes per decode step of the tiny GPT (width 64, 2 layers, vocab 512, learned 1D)."""
  positions_read = {16: 16, 130: 97.5}
  m = load_recipe("gpt_b", "tiny").model
  w, layers, vocab, classes = m.width, m.layers, m.vocab_size, m.num_classes
  hidden = 256                                 # int(2 * 4 * 64 / 3) = 170, rounded up to 256
  per_layer = 3 * w * w + w * w + 3 * w * hidden + 2 * w   # wqkv, wo, w1/w3/w2, two RMSNorms
  dense = layers * per_layer + w + w * vocab             # + final norm + output head
  embeddings = vocab * w + (classes + 1) * w + (num_tokens + 1) * w
  return {
      "num_params": dense + embeddings,
      "weight_bytes": dense * weight_itemsize,
      "embedding_row_bytes": (rows + 1) * w * weight_itemsize,   # R token rows + 1 position row
      # Positions read per step: all 16 of a one-chunk cache; with 130 tokens in 2 chunks of 65,
      # 65 for the first 65 steps and 130 for the rest: 97.5 on average.
      "kv_cache_bytes": round(layers * 2 * rows * w * cache_itemsize * positions_read[num_tokens]),
  }


def _check_common(out, batch_sizes, num_tokens, guided, weight_itemsize, cache_itemsize):
  assert out["benchmark"] == "ar_sample" and out["config"] == "gpt_b:tiny"
  assert out["kv_cache_chunks"] == (2 if num_tokens >= 128 else 1)
  assert out["platform"] == "cpu" and out["device_count"] == 1
  assert out["num_tokens"] == num_tokens and out["sampling"]["guided"] is guided
  assert out["memory_bandwidth_bytes_per_s"] > 0
  assert out["memory_bandwidth_bytes_per_s"] == max(
      out["memory_bandwidth"]["before"]["bytes_per_s"],
      out["memory_bandwidth"]["after"]["bytes_per_s"])
  assert out["memory_bandwidth"]["before"]["bytes_moved_per_call"] == 2 * 16 * 2 ** 20
  assert [p["batch_size"] for p in out["per_batch"]] == batch_sizes
  for p in out["per_batch"]:
    b = p["batch_size"]
    rows = 2 * b if guided else b
    assert p["rows"] == rows
    assert len(p["generate_time_samples_s"]) == 2
    for key in ("generate_time_s", "generate_time_min_s", "tokens_per_s", "images_per_s",
                "step_time_s", "bound_step_time_s", "bandwidth_utilization", "compile_time_s",
                "achieved_bytes_per_s"):
      assert p[key] > 0, key
    t = p["generate_time_s"]
    assert p["generate_time_min_s"] <= t
    # Throughput counts the conditional rows only; one model step per token.
    assert p["tokens_per_s"] == pytest.approx(b * num_tokens / t, rel=1e-9)
    assert p["images_per_s"] == pytest.approx(b / t, rel=1e-9)
    assert p["step_time_s"] == pytest.approx(t / num_tokens, rel=1e-9)
    expected = _expected_bytes(num_tokens, rows, weight_itemsize, cache_itemsize)
    assert out["num_params"] == expected.pop("num_params")
    nbytes = p["bytes_per_step"]
    assert {k: nbytes[k] for k in expected} == expected
    assert nbytes["total"] == sum(expected.values())
    bw = out["memory_bandwidth_bytes_per_s"]
    assert p["bound_step_time_s"] == pytest.approx(nbytes["total"] / bw, rel=1e-9)
    assert p["bandwidth_utilization"] == pytest.approx(
        p["bound_step_time_s"] / p["step_time_s"], rel=1e-9)
    assert p["achieved_bytes_per_s"] == pytest.approx(nbytes["total"] / p["step_time_s"], rel=1e-9)
    # The matrix-product bound: the same bytes over the bandwidth of a chain of (rows, K) @ (K, N)
    # matmuls in the compute dtype, measured at this row count.
    mv = p["matvec_bandwidth"]
    assert mv["bytes_per_s"] > 0 and f"({rows}, " in mv["kernel"] and out["dtype"] in mv["kernel"]
    assert p["matvec_bound_step_time_s"] == pytest.approx(nbytes["total"] / mv["bytes_per_s"],
                                                          rel=1e-9)
    assert p["matvec_bandwidth_utilization"] == pytest.approx(
        p["matvec_bound_step_time_s"] / p["step_time_s"], rel=1e-9)
    mem = p["memory_per_device"]
    assert mem is not None and mem["temp_bytes"] > 0
    # The parameters are arguments of the jitted generate.
    assert mem["argument_bytes"] >= out["num_params"] * weight_itemsize


def test_ar_sample_bench_tiny_cfg():
  """Guided (2B rows), weights cast to the compute dtype; --num_tokens overrides 16 (130: the
  cache in 2 chunks of 65). A bfloat16
  recipe samples in float32 on the CPU backend (inference_dtype 'auto')."""
  out = _run_bench("--batch_sizes=1,3", "--num_tokens=130", "--config.model.dtype=bfloat16")
  assert out["dtype"] == "float32" and out["cast_params"] is True
  assert out["recipe_dtype"] == "bfloat16" and out["inference_dtype"] == "auto"
  assert out["weight_read_dtype"] == ["float32"] and out["sampling"]["cfg_scale"] == 1.75
  _check_common(out, [1, 3], 130, guided=True, weight_itemsize=4, cache_itemsize=4)


def test_ar_sample_bench_tiny_no_cfg_bf16_masters():
  """No guidance (B rows); bf16 compute with float32 masters passed as they are."""
  out = _run_bench("--batch_sizes=2", "--cfg_scale=1", "--nocast_params",
                   "--config.model.dtype=bfloat16", "--config.inference_dtype=model")
  assert out["dtype"] == "bfloat16" and out["param_dtype"] == "float32"
  assert out["cast_params"] is False and out["weight_read_dtype"] == ["float32"]
  assert out["kv_cache_dtype"] == "bfloat16"
  _check_common(out, [2], 16, guided=False, weight_itemsize=4, cache_itemsize=2)
