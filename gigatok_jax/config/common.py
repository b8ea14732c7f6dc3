"""Config groups both recipe kinds share (mesh, distributed, the default axis rules) and recipe
variants: `parse_variant` is the one place that reads the text after the colon of
`--config=configs/x.py:variant` (`with_variant` in the package applies the `tiny` overrides).
"""

from __future__ import annotations

import dataclasses

import ml_collections

# Logical axis name -> mesh axis (or None = replicated). The one list that decides how every
# parameter and activation is sharded; see parallel.py. Order matters: the first rule for a name wins.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("teacher_embed", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("z_channels", None),
    ("code_dim", None),
    # Codebook rows (vq / ibq) over the model axes: stored sharded under FSDP, and the (tokens,
    # codes) similarity, softmax and argmax run split over `tensor` (models/quantizer.py).
    ("codebook", ("tensor", "fsdp")),
    ("position", None),
    ("norm", None),
    ("layers", None),          # the depth axis of layer stacks stored with model.scan_layers
)


def run_keys(c: ml_collections.ConfigDict, total_steps: int) -> None:
  """The top-level keys of every training recipe (launch scripts rely on them), set on `c`."""
  c.total_steps = total_steps
  c.global_batch_size = 256
  c.checkpoint_every_steps = 5000
  c.max_checkpoints_to_keep = 3
  c.seed = 0
  # A fresh run (no checkpoint yet) starts from these weights: a run directory made by
  # `python -m gigatok_jax.convert` (or its pretrained/ dir). '' = random init, or the
  # workdir's own pretrained/ when a converter made the workdir.
  c.init_from = ""
  c.log_every_steps = 50
  # Compute dtype of inference (sample, reconstruct, eval, extract_codes, the Python API): 'auto'
  # = model.dtype, but float32 on the CPU backend, whose bfloat16 matmuls are slow
  # (inference.compute_dtype); 'model' = always model.dtype; or 'float32' / 'bfloat16'.
  c.inference_dtype = "auto"


def mesh_config(axis_rules) -> ml_collections.ConfigDict:
  """Mesh axes (parallel.py). data/fsdp/tensor: sizes within a slice (ICI), -1 = fill the slice;
  dcn_*: how many slices (TPU multi-slice, or hosts of a GPU cluster) each axis spans, usually
  dcn_data (data parallelism over the slow network). Mesh axis size = ICI size x DCN size."""
  return ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1,
      dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
      axis_rules=axis_rules,
  ))


def distributed_config() -> ml_collections.ConfigDict:
  """Multi-process jobs (distributed.py). Unset ('' / -1) = JAX's own detection: SLURM, Cloud TPU
  VMs, env JAX_COORDINATOR_ADDRESS; no cluster found = one process."""
  return ml_collections.ConfigDict(dict(
      coordinator_address="",       # 'host:port' of process 0
      num_processes=-1,
      process_id=-1,
      initialization_timeout_s=300,  # wait this long for every process to connect, and at
                                     # the barrier after each program's first compile
      heartbeat_timeout_s=100,      # a process silent this long is dead: the others abort
  ))


@dataclasses.dataclass(frozen=True)
class Variant:
  """A parsed recipe variant: `part` picks one of a multi-recipe file's configs ('' = its main
  one; e.g. 'tokenizer' in configs/demo_ar.py), `name` the variant of it ('' = as written)."""
  part: str = ""
  name: str = ""

  @property
  def tiny(self) -> bool:
    return self.name == "tiny"


def _expected(options) -> str:
  quoted = [repr(o) for o in options]
  return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def parse_variant(variant: str, *, names=("tiny",), parts=()) -> Variant:
  """'' | NAME | PART | PART_NAME -> Variant; `names` are the variants the recipe has besides '',
  `parts` its extra configs. An unknown one raises ValueError (load_recipe names the key)."""
  variant = variant or ""
  part = ""
  for p in parts:
    if variant == p or variant.startswith(p + "_"):
      part, variant = p, variant[len(p) + 1:]
      break
  if variant and variant not in names:
    raise ValueError(f"unknown variant {variant!r} (expected {_expected(('',) + tuple(names))})")
  return Variant(part, variant)
