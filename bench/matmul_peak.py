r"""Measured matmul peak of the local device: the denominator of MFU in bench/tokenizer_step.py.

  python bench/matmul_peak.py [--dtype=auto|float32|bfloat16] [--sizes=4096,2048] [--runs=5]

Times a jitted square `a @ b` (2 n^3 FLOPs) for each size and reports, per size, the median of
`runs` timed calls after one warm-up; the peak is the best of those medians. Defaults are sized
to the device: float32 n in {2048, 4096} on CPU (bf16 is no faster there), bfloat16 n in
{8192, 16384} on GPU/TPU. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repo root on sys.path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

DEFAULT_SIZES = {"cpu": (2048, 4096), "gpu": (8192, 16384), "tpu": (8192, 16384)}


def default_dtype(platform: str) -> str:
  return "float32" if platform == "cpu" else "bfloat16"


def make_matmul(n: int, dtype: str):
  """A zero-argument callable running one jitted (n, n) @ (n, n) on the first device."""
  dev = jax.devices()[0]
  ka, kb = jax.random.split(jax.random.key(n))
  a = jax.device_put(jax.random.normal(ka, (n, n), jnp.dtype(dtype)), dev)
  b = jax.device_put(jax.random.normal(kb, (n, n), jnp.dtype(dtype)), dev)
  f = jax.jit(jnp.matmul).lower(a, b).compile()
  return lambda: f(a, b)


def resolve(dtype: str, sizes: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
  platform = jax.devices()[0].platform
  if dtype == "auto":
    dtype = default_dtype(platform)
  return dtype, tuple(sizes or DEFAULT_SIZES.get(platform, (4096,)))


def measure(dtype: str = "auto", sizes: Sequence[int] | None = None, runs: int = 5) -> dict:
  """Returns {'peak_flops_per_s', 'dtype', 'size', 'per_size': {...}} for one device."""
  dtype, sizes = resolve(dtype, sizes)
  per_size = {}
  for n in sizes:
    mm = make_matmul(n, dtype)
    samples = common.time_calls(mm, steps=runs, warmup=1)
    t = common.summarize_times(samples)
    per_size[str(n)] = {
        "median_s": t["median"],
        "min_s": t["min"],
        "flops_per_s": 2.0 * n ** 3 / t["median"],
    }
    del mm
  best = max(per_size, key=lambda k: per_size[k]["flops_per_s"])
  return {
      "peak_flops_per_s": per_size[best]["flops_per_s"],
      "dtype": dtype,
      "size": int(best),
      "runs": runs,
      "per_size": per_size,
  }


def main(argv=None) -> None:
  from absl import app, flags
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16", "float16"],
                    "Operand dtype; auto = float32 on CPU, bfloat16 on GPU/TPU.")
  flags.DEFINE_list("sizes", [], "Square sizes n to time (default: sized to the device).")
  flags.DEFINE_integer("runs", 5, "Timed calls per size (the median is used).")

  def _main(args):
    del args
    f = flags.FLAGS
    result = measure(f.dtype, [int(s) for s in f.sizes] or None, f.runs)
    result.update(common.device_info())
    result["load_average"] = common.load_average()
    print(json.dumps(result, indent=1))

  app.run(_main, argv)


if __name__ == "__main__":
  main()
