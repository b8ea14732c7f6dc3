"""`--mode=aot`: will this recipe fit, and how fast could it be, on a TPU slice I do not have?

Compiles the real train step of a recipe (tokenizer: generator + discriminator + DINOv2 + LPIPS in
the GAN phase; GPT: its step) ahead of time for a TPU topology described by libtpu, on any machine,
CPU-only included (`pip install libtpu`, the version jax pins: see README). Nothing is allocated:
parameters, optimizer state, teachers and the batch are abstract shapes with their shardings.

For each target it prints one row: devices, mesh, parameters, bytes per device (arguments, temps,
outputs, their total minus donated aliases) against the device's HBM, FLOPs per step per device
(matmuls and convolutions of the step's jaxpr over the devices, `flops.py`: XLA's cost analysis
counts a scanned layer once), and the step time those FLOPs take at 50% of the chip's bf16 peak.

Targets: Cloud TPU slice names (`v5e-256`, `v5p-64`, `v6e-64`, `v4-32`; the number counts chips
for v5e / v6e and TensorCores, two per chip, for v4 / v5p) or explicit topologies (`v5e:4x4`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import math
import re
import threading
import time

import jax

from gigatok_jax import console, fileio, parallel
from gigatok_jax.errors import UserError
from gigatok_jax.flops import jaxpr_flops

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int            # per chip
  peak_bf16_flops: float    # per chip, dense
  cores_in_name: bool       # slice names count TensorCores (2 per chip) rather than chips
  dims: int                 # torus dimensions of the topology string


# Public Cloud TPU figures per chip.
CHIPS = {
    "v4": Chip(32 * GiB, 275e12, True, 3),
    "v5e": Chip(16 * GiB, 197e12, False, 2),
    "v5p": Chip(95 * GiB, 459e12, True, 3),
    "v6e": Chip(32 * GiB, 918e12, False, 2),
}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
MFU_ASSUMED = 0.5


def topology_name(target: str) -> tuple[str, str, int]:
  """'v5p-64' or 'v5p:2x4x4' -> (chip, libtpu topology string, number of chips)."""
  m = re.fullmatch(r"(v4|v5e|v5p|v6e)([-:])(.+)", target)
  if not m:
    raise UserError(f"--aot_targets: unknown target {target!r}: expected e.g. v5e-256, v5p-64, "
                      f"v6e-64 or v5e:4x4 (chips {sorted(CHIPS)})")
  chip, sep, rest = m.groups()
  if sep == ":":
    return chip, target, math.prod(int(x) for x in rest.split("x"))
  n = int(rest)
  chips = n // 2 if CHIPS[chip].cores_in_name else n
  table = _SHAPES_3D if CHIPS[chip].dims == 3 else _SHAPES_2D
  if chips not in table:
    raise UserError(f"--aot_targets: {target}: no standard slice shape for {chips} chips "
                      f"(known: {sorted(table)}); give the topology instead, e.g. {chip}:2x2")
  return chip, f"{chip}:{table[chips]}", chips


def topology_devices(topology: str):
  """libtpu's compile-only devices for a topology string such as 'v5e:4x4' or 'v5p:2x2x4'."""
  dims = [int(x) for x in topology.split(":")[1].split("x")]
  kwargs = {}
  if dims[0] % 2 or dims[1] % 2:
    # libtpu's default of 2x2 chips per host does not divide 1xN slices (v5e-1, v5e:1x2).
    kwargs["chips_per_host_bounds"] = (1, 1, 1)
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    return topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    if "lockfile" in str(e):
      hint = "; another process holds libtpu: to plan beside it set ALLOW_MULTIPLE_LIBTPU_LOAD=1"
    elif importlib.util.find_spec("libtpu") is None:
      hint = ("; AOT planning needs libtpu: pip install libtpu==0.0.42.1 (the version jax 0.10.2 "
              "pins)")
    else:
      hint = ""
    raise UserError(f"cannot describe TPU topology {topology!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}){hint}") from None


def _traced(config, mesh):
  """(traced train step, number of parameters) for the recipe on `mesh`, all abstract.

  The very jitted step training runs (`task.jitted_train_step(phase)`), traced with the task's
  abstract state, batch and teacher arguments in the steady phase (tokenizer: GAN on, aux losses
  over). The task is built outside `jax.set_mesh` (as the trainer does: under a mesh context,
  abstract module construction would read the logical names as mesh axes); only tracing runs
  inside it. Teachers are random-weight shapes: nothing is read from disk.
  """
  if config.get("task") == "gpt":
    from gigatok_jax.train.gpt import GPTTask  # pylint: disable=import-outside-toplevel
    if config.model.attention == "auto":
      # 'auto' reads jax.default_backend(), which is this host's CPU, not the TPU target: trace
      # the core a TPU run picks (models/gpt.py).
      config = copy.deepcopy(config)
      config.model.attention = "xla"
    task = GPTTask(config, mesh)
    num_params = task.num_params
  else:
    from gigatok_jax.train.tokenizer import TokenizerTask  # pylint: disable=import-outside-toplevel
    task = TokenizerTask(config, mesh, random_teachers=True)
    num_params = task.num_params + task.num_disc_params
  step = task.jitted_train_step(task.steady_phase())
  with jax.set_mesh(mesh):
    traced = step.trace(task.abstract_state, task.abstract_batch(), *task.abstract_extra_args())
  return traced, num_params


def plan(config, target: str) -> dict:
  """Compiles the recipe's train step for `target`; the row of the plan table as a dict."""
  chip_name, topology, chips = topology_name(target)
  chip = CHIPS[chip_name]
  devices = topology_devices(topology)
  from gigatok_jax.config import validate  # pylint: disable=import-outside-toplevel
  validate.validate(config, num_devices=len(devices), check_data=False, check_teachers=False)
  mesh = parallel.make_mesh(config.mesh, devices)
  t0 = time.time()
  traced, num_params = _traced(config, mesh)
  flops = jaxpr_flops(traced.jaxpr) / len(devices)
  row = {"target": target, "topology": topology, "chips": chips, "devices": len(devices),
         "mesh": dict(mesh.shape), "global_batch_size": config.global_batch_size,
         "params": int(num_params), "hbm_bytes": int(chip.hbm_bytes * chips // len(devices)),
         "flops_per_step_per_device": flops}
  console.info(f"{target}: {len(devices)} devices, mesh {row['mesh']}, "
                 f"{num_params / 1e6:.0f}M parameters, {flops / 1e12:.2f} TFLOP per device per "
                 f"step, traced in {time.time() - t0:.0f} s; compiling (large recipes: 10-45 min "
                 "on a laptop CPU)")
  try:
    with jax.set_mesh(mesh), _heartbeat(target, t0):
      compiled = traced.lower().compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler's verdict that the step does not fit: a row of the table, not a crash,
    # so that a list of targets finds the smallest slice that fits in one command.
    message = str(e).strip().splitlines()[0]
    return {**row, "argument_bytes": None, "temp_bytes": None, "output_bytes": None,
            "alias_bytes": None, "total_bytes": None, "fits": False,
            "required_bytes": _required_bytes(message),
            "compiler_message": message, "step_time_s_at_50pct_mfu": None,
            "compile_s": round(time.time() - t0, 1)}
  mem = compiled.memory_analysis()
  peak = chip.peak_bf16_flops * chips / len(devices)
  total = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
           - mem.alias_size_in_bytes)
  return {**row,
          "argument_bytes": int(mem.argument_size_in_bytes),
          "temp_bytes": int(mem.temp_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes),
          "total_bytes": int(total), "fits": bool(total <= row["hbm_bytes"]),
          "step_time_s_at_50pct_mfu": flops / (MFU_ASSUMED * peak),
          "compile_s": round(time.time() - t0, 1)}


@contextlib.contextmanager
def _heartbeat(target: str, t0: float, every_s: float = 300.0):
  """A console line every `every_s` seconds while the TPU compiler runs: it prints nothing itself."""
  done = threading.Event()

  def beat():
    while not done.wait(every_s):
      console.info(f"{target}: still compiling ({(time.time() - t0) / 60:.0f} min)")

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _required_bytes(message: str) -> int | None:
  """Bytes the compiler asked for in an out-of-memory message: '... temporaries (389.90G) exceeds
  available HBM (15.75G)' -> 389.90 GiB, 'Used 15.76G of 15.75G hbm' -> 15.76 GiB; else None."""
  m = re.search(r"Used ([\d.]+)([KMGT]) of", message) or re.search(r"\(([\d.]+)([KMGT])\)", message)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def format_table(rows: list[dict]) -> str:
  head = (f"{'target':<10}{'mesh (data,fsdp,tensor)':<24}{'params':>9}{'args GiB':>10}{'temp GiB':>10}"
          f"{'out GiB':>9}{'total/HBM GiB':>16}{'fits':>6}{'TFLOP/dev':>11}{'step@50%':>10}")
  lines = [head]

  def gib(n, width):
    return f"{'-' if n is None else f'{n / GiB:.2f}':>{width}}"

  def total(r):  # at least what the compiler asked for, when it refused
    if r["total_bytes"] is None and r.get("required_bytes") is not None:
      return f"{'>' + format(r['required_bytes'] / GiB, '.2f'):>8}"
    return gib(r["total_bytes"], 8)

  for r in rows:
    mesh = ",".join(str(v) for v in r["mesh"].values())
    step = r["step_time_s_at_50pct_mfu"]
    lines.append(
        f"{r['target']:<10}{mesh:<24}{r['params'] / 1e6:>8.1f}M{gib(r['argument_bytes'], 10)}"
        f"{gib(r['temp_bytes'], 10)}{gib(r['output_bytes'], 9)}"
        f"{total(r)}/{r['hbm_bytes'] / GiB:<7.0f}{'yes' if r['fits'] else 'NO':>6}"
        f"{r['flops_per_step_per_device'] / 1e12:>11.2f}{'' if step is None else f'{step:.3f}s':>10}")
    if "compiler_message" in r:
      lines.append(f"{'':<10}TPU compiler: {r['compiler_message']}")
  return "\n".join(lines)


def run(config, workdir=None, *, progress: bool = True, options=None) -> list[dict]:
  """Plans `options['aot_targets']`; writes the rows to `options['aot_output']` when set."""
  del workdir, progress
  options = options or {}
  return plan_targets(config, options.get("aot_targets", ()), options.get("aot_output", ""))


def plan_targets(config, targets: list[str], output: str = "") -> list[dict]:
  rows = []
  for target in targets:
    rows.append(plan(config, target))
    table = format_table(rows[-1:])
    print(table.split("\n", 1)[1] if len(rows) > 1 else table, flush=True)  # one header
  if output:
    fileio.atomic_write_json(output, rows)
  return rows
