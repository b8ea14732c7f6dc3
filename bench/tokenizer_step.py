r"""Throughput, FLOPs, MFU and memory of one tokenizer train step. Prints one JSON object.

  python bench/tokenizer_step.py --config=configs/tokenizer_ss.py --config.global_batch_size=2 \
      [--steps=3] [--warmup=1] [--gan] [--aux] [--peak_flops=F] [--config.model.dtype=bfloat16 ...]

The step is `TokenizerTask.jitted_train_step(Phase(gan, aux))`: by default the generator-only step (L2 +
VQ + commitment (+ entropy if the config's weight is > 0); no discriminator, no auxiliary losses).
`--gan` adds the GAN term and the discriminator update (after `loss.disc_start_step`), `--aux` the
auxiliary losses of early training (before `loss.aux_loss_end`), `--teachers` the LPIPS and DINOv2
semantic terms with the config's weights (random-weight teachers of the real shapes: timing needs no
weight files). `--split` (implies --gan --teachers) also reports the cost split of the full step:
generator (the default step), DINOv2 teacher forward, LPIPS forward+backward, discriminator
(update + adversarial term), each compiled alone: FLOPs, time and share of their sum.
Inputs are random images in [-1, 1], so no dataset is needed.

Reported:
  step_time_s        median of `--steps` timed steps after `--warmup` untimed ones (+ min, samples)
  step_cpu_time_s    median process CPU time (all threads) of a step: on a CPU shared with other
                     processes, compare it with cpu_cores x step_time_s to see the contention
  flops_per_step     XLA `compiled.cost_analysis()['flops']` per device (x device_count: global)
  peak_flops_per_s   measured matmul peak of one device (bench/matmul_peak.py; the fastest size is
                     re-timed after every timed step; the better median is used), or --peak_flops
  mfu                (flops_per_step_per_device / step_time) / peak_flops_per_s
  memory             `compiled.memory_analysis()` per device (None where the backend has none)
  compile_time_s     XLA compile of the step (lower_time_s: tracing + lowering; init_time_s: state)
On a shared CPU, other processes skew timings: `load_average` is reported at start and end.

CPU note (jaxlib 0.10): XLA routes convolutions to YNNPACK by default, whose kernel-gradient
convolution is several times slower than XLA's own; importing gigatok_jax turns YNNPACK fusions off
(gigatok_jax/xla_cpu_flags.py; GIGATOK_KEEP_XLA_FLAGS=1 keeps XLA's default). `xla_flags` records
the flags in effect.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (also puts the repo root on sys.path)
import matmul_peak  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

_DEFAULT_CONFIG = os.path.join(common.REPO_ROOT, "configs", "tokenizer_ss.py")

config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                "Recipe file, e.g. configs/tokenizer_ss.py[:tiny].", lock_config=True)
flags.DEFINE_integer("steps", 3, "Timed steps (the median is reported).", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed steps before timing.", lower_bound=0)
flags.DEFINE_bool("gan", False, "Benchmark the step with the GAN loss and discriminator update.")
flags.DEFINE_bool("aux", False, "Include the auxiliary losses of early training (feature "
                  "reconstruction, shortcut reconstruction if configured).")
flags.DEFINE_bool("teachers", False, "Add the LPIPS and DINOv2 semantic losses (random-weight "
                  "teachers of the real shapes).")
flags.DEFINE_bool("split", False, "Also report the cost split generator / teacher / LPIPS / "
                  "discriminator (implies --gan --teachers).")
flags.DEFINE_float("peak_flops", 0.0,
                   "Device peak FLOP/s for MFU; 0 = measure it with bench/matmul_peak.py.")
flags.DEFINE_enum("peak_dtype", "auto", ["auto", "float32", "bfloat16"],
                  "Matmul dtype of the measured peak; auto = float32 on CPU, bfloat16 elsewhere.")
flags.DEFINE_list("peak_sizes", [], "Matmul sizes for the peak (default: sized to the device).")
flags.DEFINE_integer("peak_runs", 5, "Timed matmuls per size for the peak.")
flags.DEFINE_integer("seed", 0, "Seed of the random input batch.")
FLAGS = flags.FLAGS


def _config_name(path: str) -> str:
  return os.path.basename(path).split(":")[0].removesuffix(".py") + (
      ":" + path.split(":", 1)[1] if ":" in path else "")


def _jitted_step(task, gan: bool, aux: bool):
  return task.jitted_train_step((gan, aux))


def _time_compiled(compiled, args, steps: int) -> dict:
  """FLOPs and median time of a compiled function (one untimed call first)."""
  samples = common.time_calls(lambda: compiled(*args), steps=steps, warmup=1)
  return {"flops": common.flops(compiled), "time_s": statistics.median(samples)}


def cost_split(task, state, batch, frozen, steps: int) -> dict:
  """Generator step, teacher forward, LPIPS fwd+bwd and discriminator work, each compiled alone."""
  import jax.numpy as jnp
  from flax import nnx
  from gigatok_jax.train.tokenizer import hinge_d_loss

  images = batch["image"]
  parts = {}
  # Generator: the default step (L2 + VQ terms); the teachers' weights are passed but unused.
  saved_names = task.teachers.names
  task.teachers.names = ()          # the same task object with the teacher terms switched off
  task._steps.pop((False, False), None)
  try:
    plain = task.jitted_train_step((False, False))
    with jax.set_mesh(task.mesh):
      compiled = plain.lower(state, batch, frozen).compile()
  finally:
    task.teachers.names = saved_names
    task._steps.pop((False, False), None)
  # Donation consumes the state: time a copy.
  state_copy = jax.tree.map(jnp.copy, state)
  holder = {"s": state_copy}

  def gen_step():
    holder["s"], m = compiled(holder["s"], batch, frozen)
    return m
  samples = common.time_calls(gen_step, steps=steps, warmup=1)
  parts["generator"] = {"flops": common.flops(compiled), "time_s": statistics.median(samples)}

  with jax.set_mesh(task.mesh):
    teacher = jax.jit(task.teachers.semantic_target).lower(frozen, images).compile()
    parts["dinov2_teacher"] = _time_compiled(teacher, (frozen, images), steps)
    lp = jax.jit(jax.grad(task.teachers.perceptual_loss, argnums=1)).lower(
        frozen, images, images).compile()
    parts["lpips"] = _time_compiled(lp, (frozen, images * 0.9, images), steps)

    def disc_work(dp, stats, real, fake):
      def d_loss(dp):
        disc = nnx.merge(task.disc_graph, dp, stats)
        logits = disc(jnp.concatenate([real, fake], 0), train=True)
        r, f = jnp.split(logits, 2, 0)
        return hinge_d_loss(r, f)

      def g_adv(x):
        disc = nnx.merge(task.disc_graph, dp, stats)
        return -jnp.mean(disc(x, train=True))
      return jax.grad(d_loss)(dp), jax.grad(g_adv)(fake)
    dw = jax.jit(disc_work).lower(state.disc_params, state.disc_stats, images, images).compile()
    parts["discriminator"] = _time_compiled(
        dw, (state.disc_params, state.disc_stats, images, images * 0.9), steps)
  total = sum(p["time_s"] for p in parts.values())
  total_flops = sum(p["flops"] for p in parts.values())
  for p in parts.values():
    p["time_share"] = p["time_s"] / total
    p["flops_share"] = p["flops"] / total_flops if total_flops else 0.0
  return parts


def run(config) -> dict:
  from gigatok_jax import parallel
  from gigatok_jax.config import validate
  from gigatok_jax.train.tokenizer import TokenizerTask

  load_start = common.load_average()
  if FLAGS.split:
    FLAGS.gan = FLAGS.teachers = True
  if not FLAGS.teachers:  # the generator step the MFU target is about: no frozen networks
    config.loss.perceptual_weight = 0.0
    config.loss.semantic_weight = 0.0
  elif config.loss.perceptual_weight <= 0 or config.loss.semantic_weight <= 0:
    raise SystemExit("--teachers: set loss.perceptual_weight and loss.semantic_weight > 0")
  validate.validate(config, check_data=False)
  if config.model.scan_layers:
    # MFU here uses XLA's cost analysis, which counts a scanned layer's FLOPs once.
    raise SystemExit("--config.model.scan_layers=True: this benchmark counts FLOPs with XLA's cost "
                     "analysis, which counts a scanned layer once; run it with "
                     "--config.model.scan_layers=False (the same FLOPs, unrolled)")
  mesh = parallel.make_mesh(config.mesh)
  batch_size = int(config.global_batch_size)
  size = int(config.data.image_size)
  dp = parallel.data_parallel_size(mesh, tuple(tuple(r) for r in config.mesh.axis_rules))
  if batch_size % dp:
    raise SystemExit(f"--config.global_batch_size={batch_size} is not divisible by the "
                     f"data-parallel size {dp}")

  t0 = time.perf_counter()
  task = TokenizerTask(config, mesh, random_teachers=FLAGS.teachers)
  state = common.block(task.init_state())
  frozen = common.block(task.load_teachers())
  init_s = time.perf_counter() - t0

  # Process-local slice of one random global batch.
  local = batch_size // jax.process_count()
  rng = np.random.default_rng(FLAGS.seed)
  np_batch = {
      "image": rng.uniform(-1.0, 1.0, (local, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, 1000, (local,)).astype(np.int32),
  }
  batch = parallel.global_batch(np_batch, mesh, task.rules)
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
                    for k, v in batch.items()}

  step = _jitted_step(task, FLAGS.gan, FLAGS.aux)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = step.lower(task.abstract_state, batch_abstract,
                         task.teachers.abstract_args(mesh, task.rules))
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  common.log(f"lowered in {lower_s:.1f} s, compiled in {compile_s:.1f} s")

  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch, frozen)
    return metrics

  # Matmul peak: every size once (to pick the fastest), then the chosen size again after each
  # timed step, so that a load change during the run shows up in `peak`.
  if FLAGS.peak_flops > 0:
    peak = {"peak_flops_per_s": FLAGS.peak_flops, "source": "--peak_flops"}
    matmul, peak_flop = None, 0.0
  else:
    peak = matmul_peak.measure(FLAGS.peak_dtype, [int(s) for s in FLAGS.peak_sizes] or None,
                               FLAGS.peak_runs)
    peak["source"] = "bench/matmul_peak.py, interleaved with the timed steps"
    matmul = matmul_peak.make_matmul(peak["size"], peak["dtype"])
    peak_flop = 2.0 * peak["size"] ** 3
  peak_samples: list[float] = []

  for _ in range(FLAGS.warmup):
    common.block(one_step())
  samples, cpu_samples = [], []
  for _ in range(FLAGS.steps):
    samples += common.time_calls(one_step, steps=1, warmup=0, cpu_samples=cpu_samples)
    if matmul is not None:
      # One untimed call first: right after a step the first matmul is slowed by page faults.
      peak_samples += common.time_calls(matmul, steps=FLAGS.peak_runs, warmup=1)
  t = common.summarize_times(samples)
  common.log(f"step times (s): {[round(s, 3) for s in samples]}, "
             f"CPU times (s): {[round(s, 3) for s in cpu_samples]}")
  if matmul is not None:
    # The peak is the best of the two medians: on a shared CPU other processes slow the matmul
    # too, and right after a step XLA's idle Eigen workers still spin for a while and slow it.
    peak["before_steps_flops_per_s"] = peak["peak_flops_per_s"]
    peak["interleaved_flops_per_s"] = peak_flop / statistics.median(peak_samples)
    peak["peak_flops_per_s"] = max(peak["before_steps_flops_per_s"],
                                   peak["interleaved_flops_per_s"])

  n_dev = len(jax.devices())
  flops_dev = common.flops(compiled)
  achieved = flops_dev / t["median"] if flops_dev else 0.0
  result = {
      "benchmark": "tokenizer_train_step",
      "config": _config_name(config_flags.get_config_filename(FLAGS["config"])),
      "kind": config.model.kind,
      "gan": bool(FLAGS.gan),
      "aux": bool(FLAGS.aux),
      "teachers": list(task.teachers.names),
      "entropy_weight": float(config.loss.entropy_weight),
      "batch_size": batch_size,
      "image_size": size,
      "dtype": config.model.dtype,
      "param_dtype": config.model.param_dtype,
      "remat": config.model.remat,
      "num_params": int(task.num_params),
      **common.device_info(),
      "mesh": dict(mesh.shape),
      "steps": FLAGS.steps,
      "warmup": FLAGS.warmup,
      "step_time_s": t["median"],
      "step_time_min_s": t["min"],
      "step_time_samples_s": t["samples"],
      "step_cpu_time_s": statistics.median(cpu_samples),
      "images_per_s": batch_size / t["median"],
      "flops_per_step_per_device": flops_dev,
      "flops_per_step": flops_dev * n_dev,
      "achieved_flops_per_s_per_device": achieved,
      "peak_flops_per_s": peak["peak_flops_per_s"],
      "peak": peak,
      "mfu": achieved / peak["peak_flops_per_s"],
      "memory_per_device": common.memory_analysis(compiled),
      "init_time_s": init_s,
      "lower_time_s": lower_s,
      "compile_time_s": compile_s,
      "load_average_start": load_start,
  }
  if FLAGS.split:
    result["cost_split"] = cost_split(task, holder["state"], batch, frozen, FLAGS.steps)
  result["load_average_end"] = common.load_average()
  return result


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(json.dumps(run(FLAGS.config), indent=1), flush=True)


if __name__ == "__main__":
  app.run(main)
