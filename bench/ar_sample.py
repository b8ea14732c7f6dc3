r"""Autoregressive GPT sampling with a KV cache: tokens/s, images/s and the memory-bandwidth bound.

  python bench/ar_sample.py [--config=configs/gpt_b.py[:tiny]] [--batch_sizes=1,8,64] \
      [--cfg_scale=1.75] [--steps=3] [--warmup=1] [--num_tokens=N] [--config.model.dtype=float32]

For each batch size B, times one full `gigatok_jax.models.sampler.generate` call (class-token prefill + a
`lax.fori_loop` over the image tokens, all inside one jit) on random-weight GPT parameters and
random class labels; the recipe's `sample` group gives the schedule / temperature / top-k / top-p,
`--cfg_scale` the guidance scale (1 = no guidance). With guidance the model runs R = 2B rows (the
classes and the null class); throughput counts only the B conditional rows. Prints one JSON object.

Per batch size (`per_batch[i]`):
  generate_time_s     median wall time of one generate call (`--steps` timed after `--warmup`)
  tokens_per_s        B * num_tokens / generate_time_s;   images_per_s = B / generate_time_s
  step_time_s         generate_time_s / num_tokens: one model step per token (the prefill of the
                      class token and num_tokens - 1 cached steps; the last token needs no step)
  bytes_per_step      HBM/DRAM bytes one decode step must read, as a model (not a measurement):
    weight_bytes        every parameter tensor except the embedding tables, fully read each step,
                        at the itemsize of the arrays handed to the jitted generate (see below)
    embedding_row_bytes the gathered rows: R token-embedding rows (+ 1 positional row, learned_1d);
                        the class embedding is read once in the prefill instead of a token row
    kv_cache_bytes      layers x (k, v) x R x positions read x width x itemsize of the compute
                        dtype, where a step at position p reads the cache chunks up to p's, all
                        of each (`sampler.cache_chunks(num_tokens)` chunks of ceil(num_tokens /
                        chunks) positions): the mean over the num_tokens steps, rounded
    Activations, logits (R x vocab float32) and the one-row cache writes are not counted.
  bound_step_time_s   bytes_per_step.total / measured bandwidth
  bandwidth_utilization  bound_step_time_s / step_time_s (> 1 is possible when the bytes fit in
                      a cache level faster than the copy kernel's: tiny models on CPU)
  matvec_bandwidth    the weight bandwidth of a chain of (rows, K) @ (K, N) matmuls in the compute
                      dtype over as many MiB as the copy kernel (`common.matvec_bandwidth`): what
                      the backend's matrix kernels reach at this row count
  matvec_bound_step_time_s, matvec_bandwidth_utilization   the same bound and ratio against it
  compile_time_s, lower_time_s, memory_per_device (`compiled.memory_analysis()`)

Compute dtype: the one sampling runs in, `gigatok_jax.inference.compute_dtype` (the recipe's
`inference_dtype`: by default float32 on the CPU backend, else model.dtype); `recipe_dtype` is
model.dtype as written. `--config.inference_dtype=model` times model.dtype on CPU too.

Weight dtype: the recipe keeps float32 masters (`param_dtype`) and casts to `dtype` in every
matmul. By default (`--cast_params`) the parameters are cast to the compute dtype once, before the
jitted generate, as an inference server would, so the kernels read compute-dtype weights and
weight_bytes uses that itemsize. `--nocast_params` passes the param_dtype masters: the casts then
sit in the loop body, and weight_bytes counts param_dtype bytes (what is read if XLA leaves the
converts in the loop; if it hoists them, compute-dtype copies are read instead and show up in
memory_per_device.temp_bytes). `weight_read_dtype` records which itemsize was counted.

Bandwidth: `bench/common.py:memory_bandwidth`, a donated float32 y = x + 1 over `--copy_mib` MiB,
counted as read + write bytes; measured before and after the timed runs, the larger median is used.
On a shared CPU other processes skew timings: `load_average` is reported at start and end.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repo root on sys.path)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

_DEFAULT_CONFIG = os.path.join(common.REPO_ROOT, "configs", "gpt_b.py")
GATHERED = ("tok_embeddings", "cls_embedding", "positional_embedding")

config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                "GPT recipe file, e.g. configs/gpt_b.py[:tiny].", lock_config=True)
flags.DEFINE_list("batch_sizes", ["1", "8", "64"], "Batch sizes (conditional rows) to time.")
flags.DEFINE_float("cfg_scale", 1.75, "Classifier-free guidance scale; 1 = no guidance (B rows).")
flags.DEFINE_integer("steps", 3, "Timed generate calls per batch size (the median is reported).",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed generate calls before timing.", lower_bound=0)
flags.DEFINE_integer("num_tokens", 0, "Image tokens per sample; 0 = the recipe's.", lower_bound=0)
flags.DEFINE_bool("cast_params", True, "Cast the parameters to the compute dtype before the "
                  "jitted generate (else pass the param_dtype masters).")
flags.DEFINE_integer("copy_mib", 0, "MiB of the bandwidth copy kernel; 0 = 256 on CPU, 1024 "
                     "elsewhere.", lower_bound=0)
flags.DEFINE_integer("copy_runs", 5, "Timed calls of the copy kernel.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the weights, labels and sampling key.")
FLAGS = flags.FLAGS


def _config_name(path: str) -> str:
  return os.path.basename(path).split(":")[0].removesuffix(".py") + (
      ":" + path.split(":", 1)[1] if ":" in path else "")


def bytes_per_step(params: dict, model_cfg, rows: int) -> dict[str, int]:
  """Bytes one decode step reads (model in the docstring); `params` a pure dict of arrays."""
  width = int(model_cfg.width)
  fully_read = {k: v for k, v in params.items() if k not in GATHERED}
  weight = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(fully_read))
  emb_itemsize = params["tok_embeddings"].dtype.itemsize
  emb_rows = rows + (1 if "positional_embedding" in params else 0)
  cache_itemsize = jnp.dtype(model_cfg.dtype).itemsize
  from gigatok_jax.models.gpt import chunk_size
  from gigatok_jax.models.sampler import cache_chunks
  t = int(model_cfg.num_tokens)
  size = chunk_size(t, cache_chunks(t))                        # positions per cache chunk
  positions_read = sum((p // size + 1) * size for p in range(t)) / t
  kv = round(int(model_cfg.layers) * 2 * rows * positions_read * width * cache_itemsize)
  out = {
      "weight_bytes": weight,
      "embedding_row_bytes": emb_rows * width * emb_itemsize,
      "kv_cache_bytes": kv,
  }
  out["total"] = sum(out.values())
  return out


def run(config) -> dict:
  from flax import nnx
  from gigatok_jax.models.gpt import GPT, count_params
  from gigatok_jax.models.sampler import SamplingSettings, cache_chunks, generate

  load_start = common.load_average()
  if FLAGS.num_tokens:
    config.model.num_tokens = FLAGS.num_tokens
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  cfg = config.model
  num_tokens = int(cfg.num_tokens)
  settings = SamplingSettings.from_config(config.sample)
  settings = SamplingSettings(**{**settings.__dict__, "cfg_scale": float(FLAGS.cfg_scale)})
  settings.check()
  guided = settings.cfg_scale != 1.0
  platform = jax.devices()[0].platform
  from gigatok_jax import inference
  recipe_dtype = cfg.dtype
  cfg.dtype = inference.compute_dtype(config, platform)   # what sampling runs in (inference_dtype)

  t0 = time.perf_counter()
  model = GPT(cfg, rngs=nnx.Rngs(FLAGS.seed))
  graph, params = nnx.split(model)
  num_params = count_params(nnx.state(model, nnx.Param))
  del model
  compute = jnp.dtype(cfg.dtype)
  if FLAGS.cast_params:
    params = jax.tree.map(
        lambda x: x.astype(compute) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  params = common.block(params)
  init_s = time.perf_counter() - t0
  pure = nnx.to_pure_dict(params)
  weight_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(pure)})
  common.log(f"{num_params / 1e6:.1f}M parameters read as {weight_dtypes}, init {init_s:.1f} s")

  copy_mib = FLAGS.copy_mib or (256 if platform == "cpu" else 1024)
  bw_before = common.memory_bandwidth(copy_mib, FLAGS.copy_runs)
  common.log(f"copy bandwidth {bw_before['bytes_per_s'] / 1e9:.1f} GB/s")

  @jax.jit
  def sample(params, labels, key):
    return generate(nnx.merge(graph, params), labels, key, settings)

  rng = np.random.default_rng(FLAGS.seed)
  key = jax.random.key(FLAGS.seed)
  measured = []
  for b in batch_sizes:
    labels = jnp.asarray(rng.integers(0, int(cfg.num_classes), (b,)).astype(np.int32))
    t0 = time.perf_counter()
    lowered = sample.lower(params, labels, key)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    common.log(f"batch {b}: lowered in {lower_s:.1f} s, compiled in {compile_s:.1f} s")
    cpu_samples: list[float] = []
    last = {}

    def call():
      last["tokens"] = compiled(params, labels, key)
      return last["tokens"]
    samples = common.time_calls(call, FLAGS.steps, FLAGS.warmup, cpu_samples=cpu_samples)
    t = common.summarize_times(samples)
    common.log(f"batch {b}: generate times (s) {[round(s, 3) for s in samples]}")
    assert last["tokens"].shape == (b, num_tokens), last["tokens"].shape
    del last
    memory = common.memory_analysis(compiled)
    del compiled, lowered
    rows = 2 * b if guided else b
    matvec = common.matvec_bandwidth(rows, cfg.dtype, copy_mib, FLAGS.copy_runs)
    common.log(f"batch {b}: matrix-product bandwidth at {rows} rows "
               f"{matvec['bytes_per_s'] / 1e9:.1f} GB/s")
    measured.append(dict(batch_size=b, t=t, cpu=cpu_samples, lower_s=lower_s,
                         compile_s=compile_s, memory=memory, matvec=matvec))

  bw_after = common.memory_bandwidth(copy_mib, FLAGS.copy_runs)
  bandwidth = max(bw_before["bytes_per_s"], bw_after["bytes_per_s"])
  common.log(f"copy bandwidth after: {bw_after['bytes_per_s'] / 1e9:.1f} GB/s")

  per_batch = []
  for m in measured:
    b, t = m["batch_size"], m["t"]
    rows = 2 * b if guided else b
    step_s = t["median"] / num_tokens
    nbytes = bytes_per_step(pure, cfg, rows)
    bound_s = nbytes["total"] / bandwidth
    per_batch.append({
        "batch_size": b,
        "rows": rows,
        "generate_time_s": t["median"],
        "generate_time_min_s": t["min"],
        "generate_time_samples_s": t["samples"],
        "generate_cpu_time_s": float(np.median(m["cpu"])),
        "tokens_per_s": b * num_tokens / t["median"],
        "images_per_s": b / t["median"],
        "step_time_s": step_s,
        "bytes_per_step": nbytes,
        "achieved_bytes_per_s": nbytes["total"] / step_s,
        "bound_step_time_s": bound_s,
        "bandwidth_utilization": bound_s / step_s,
        "matvec_bandwidth": m["matvec"],
        "matvec_bound_step_time_s": nbytes["total"] / m["matvec"]["bytes_per_s"],
        "matvec_bandwidth_utilization": nbytes["total"] / m["matvec"]["bytes_per_s"] / step_s,
        "memory_per_device": m["memory"],
        "lower_time_s": m["lower_s"],
        "compile_time_s": m["compile_s"],
    })

  return {
      "benchmark": "ar_sample",
      "config": _config_name(config_flags.get_config_filename(FLAGS["config"])),
      "num_params": int(num_params),
      "width": int(cfg.width),
      "layers": int(cfg.layers),
      "heads": int(cfg.heads),
      "vocab_size": int(cfg.vocab_size),
      "num_tokens": num_tokens,
      "position": cfg.position,
      "dtype": cfg.dtype,
      "recipe_dtype": recipe_dtype,
      "inference_dtype": config.inference_dtype,
      "param_dtype": cfg.param_dtype,
      "cast_params": bool(FLAGS.cast_params),
      "weight_read_dtype": weight_dtypes,
      "kv_cache_dtype": cfg.dtype,
      "kv_cache_chunks": cache_chunks(num_tokens),
      "sampling": {**settings.__dict__, "guided": guided},
      **common.device_info(),
      "steps": FLAGS.steps,
      "warmup": FLAGS.warmup,
      "memory_bandwidth_bytes_per_s": bandwidth,
      "memory_bandwidth": {"before": bw_before, "after": bw_after},
      "per_batch": per_batch,
      "init_time_s": init_s,
      "load_average_start": load_start,
      "load_average_end": common.load_average(),
  }


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(json.dumps(run(FLAGS.config), indent=1), flush=True)


if __name__ == "__main__":
  app.run(main)
