"""Helpers shared by the bench/ scripts: timing, XLA cost and memory analysis, device facts.

Everything here works across jax versions: `compiled.cost_analysis()` returns a dict (jax >= 0.4.3x)
or a list with one dict per program (older), and `memory_analysis()` may return None or lack some
fields depending on the backend.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

# Lets `python bench/<script>.py` import gigatok_jax from a checkout without installing it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import gigatok_jax  # noqa: E402,F401  (sets XLA:CPU flags before the backend starts)
import jax  # noqa: E402


def log(*args) -> None:
  """Progress messages go to stderr; stdout carries only the JSON result."""
  print(*args, file=sys.stderr, flush=True)


def block(tree: Any) -> Any:
  return jax.block_until_ready(tree)


def summarize_times(samples: list[float]) -> dict[str, Any]:
  return {
      "median": statistics.median(samples),
      "min": min(samples),
      "max": max(samples),
      "samples": list(samples),
  }


def time_calls(fn: Callable[[], Any], steps: int, warmup: int,
               cpu_samples: list[float] | None = None) -> list[float]:
  """Wall time of `steps` calls of `fn` (each blocked on), after `warmup` untimed calls.

  If `cpu_samples` is given, the process CPU time (user + system, all threads) of each call is
  appended to it: on a shared CPU that is less sensitive to other processes than wall time.
  """
  for _ in range(warmup):
    block(fn())
  samples = []
  for _ in range(steps):
    c0 = time.process_time()
    t0 = time.perf_counter()
    block(fn())
    samples.append(time.perf_counter() - t0)
    if cpu_samples is not None:
      cpu_samples.append(time.process_time() - c0)
  return samples


def cost_analysis(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled executable as one flat dict (summed over programs)."""
  try:
    ca = compiled.cost_analysis()
  except Exception as e:  # noqa: BLE001 - some backends do not implement it
    log(f"cost_analysis() unavailable: {e!r}")
    return {}
  if ca is None:
    return {}
  if isinstance(ca, dict):
    parts = [ca]
  else:  # list/tuple of per-program dicts (older jax)
    parts = [p for p in ca if p]
  out: dict[str, float] = {}
  for part in parts:
    for k, v in part.items():
      try:
        out[k] = out.get(k, 0.0) + float(v)
      except (TypeError, ValueError):
        pass
  return out


def flops(compiled) -> float:
  """FLOPs of one execution per device (XLA counts a multiply-add as 2); 0.0 when unknown."""
  return float(cost_analysis(compiled).get("flops", 0.0))


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "generated_code_size_in_bytes",
                 "host_argument_size_in_bytes", "host_output_size_in_bytes",
                 "host_temp_size_in_bytes", "host_alias_size_in_bytes")


def memory_analysis(compiled) -> dict[str, int] | None:
  """Per-device buffer sizes of a compiled executable, or None when the backend has none.

  `peak_bytes` is the larger of XLA's `peak_memory_in_bytes` (where reported) and the usual bound
  arguments + outputs + temporaries - aliased (donated) bytes.
  """
  try:
    ma = compiled.memory_analysis()
  except Exception as e:  # noqa: BLE001
    log(f"memory_analysis() unavailable: {e!r}")
    return None
  if ma is None:
    return None
  if isinstance(ma, (list, tuple)):
    ma = ma[0] if ma else None
    if ma is None:
      return None
  out = {}
  for f in MEMORY_FIELDS:
    v = getattr(ma, f, None)
    if v is not None:
      out[f.replace("_size_in_bytes", "_bytes")] = int(v)
  bound = (out.get("argument_bytes", 0) + out.get("output_bytes", 0) + out.get("temp_bytes", 0)
           - out.get("alias_bytes", 0))
  out["arg_out_temp_minus_alias_bytes"] = bound
  xla_peak = getattr(ma, "peak_memory_in_bytes", None)
  if xla_peak is not None:
    out["xla_peak_memory_bytes"] = int(xla_peak)
  # The CPU backend's peak_memory_in_bytes covers little more than the arguments, so the larger
  # of the two is reported as the peak.
  out["peak_bytes"] = max(bound, int(xla_peak or 0))
  return out


def device_info() -> dict[str, Any]:
  devs = jax.devices()
  d = devs[0]
  info = {
      "platform": d.platform,
      "device_kind": d.device_kind,
      "device_count": len(devs),
      "process_count": jax.process_count(),
      "jax_version": jax.__version__,
  }
  if d.platform == "cpu":
    info["cpu_cores"] = os.cpu_count()
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return info


def load_average() -> list[float] | None:
  """1/5/15-minute load averages (other processes competing for the cores skew CPU timings)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def matvec_bandwidth(rows: int, dtype: str = "float32", mib: int = 256, runs: int = 5,
                     shape: tuple[int, int] = (1024, 2048)) -> dict[str, Any]:
  """Weight bandwidth the backend's matrix products reach at `rows` rows: a jitted chain of
  x = (x @ W_i)[:, :K] over distinct `shape` (K, N) matrices of `dtype` filling `mib` MiB.

  A decode step of a transformer is such a chain, so this is the bandwidth its weight reads can
  get from the matmul kernels, as opposed to `memory_bandwidth`'s streaming copy (on the 2-core
  CPU the matrix kernels stay at ~1/3 of the copy rate, bench/ar_sample.py). Counts the weight
  bytes only; returns the median over `runs` calls (after one untimed call) in bytes/s.
  """
  import jax.numpy as jnp

  k, n = shape
  dt = jnp.dtype(dtype)
  count = max(1, mib * 2 ** 20 // (k * n * dt.itemsize))
  dev = jax.devices()[0]
  weights = [jax.device_put(jnp.full((k, n), 1e-3, dt), dev) for _ in range(count)]
  x = jax.device_put(jnp.ones((rows, k), dt), dev)

  def chain(x, weights):
    for w in weights:                                   # (rows, K) @ (K, N) -> first K columns
      x = (x @ w)[:, :k]
    return x
  compiled = jax.jit(chain).lower(x, weights).compile()
  t = summarize_times(time_calls(lambda: compiled(x, weights), steps=runs, warmup=1))
  moved = count * k * n * dt.itemsize
  del weights
  return {
      "bytes_per_s": moved / t["median"],
      "best_bytes_per_s": moved / t["min"],
      "kernel": f"chain of {count} ({rows}, {k}) @ ({k}, {n}) {dtype} matmuls (weight bytes)",
      "bytes_per_call": moved,
      "median_s": t["median"],
      "runs": runs,
  }


def memory_bandwidth(mib: int = 256, runs: int = 5) -> dict[str, Any]:
  """Measured memory bandwidth of the first device: a jitted streaming kernel y = x + 1.

  x is a float32 vector of `mib` MiB, donated so that the output reuses its buffer (no allocation or
  first-touch page faults in the timed call); each call reads and writes every byte once, so it
  moves 2 * mib MiB. Returns the median over `runs` timed calls (after one untimed call) in bytes/s.
  """
  import jax.numpy as jnp

  n = mib * 2 ** 20 // 4
  x = jax.device_put(jnp.zeros((n,), jnp.float32), jax.devices()[0])
  add_one = jax.jit(lambda a: a + 1.0, donate_argnums=0).lower(x).compile()
  holder = {"x": x}

  def call():
    holder["x"] = add_one(holder["x"])
    return holder["x"]
  t = summarize_times(time_calls(call, steps=runs, warmup=1))
  moved = 2 * n * 4
  del holder
  return {
      "bytes_per_s": moved / t["median"],
      "best_bytes_per_s": moved / t["min"],
      "kernel": "y = x + 1, float32, donated (read + write)",
      "array_bytes": n * 4,
      "bytes_moved_per_call": moved,
      "median_s": t["median"],
      "runs": runs,
  }
