"""Device mesh, logical-axis rules and sharding helpers.

Every parameter carries logical axis names (`models/layers.py: param`); `config.mesh.axis_rules`
maps each name to a mesh axis (or None = replicated). The same code runs on one CPU device (all
axes size 1) and on a pod (axes sized from the config).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gigatok_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")



DCN_KEYS = tuple(f"dcn_{a}" for a in MESH_AXES)


def dcn_shape(mesh_cfg) -> tuple[int, ...]:
  """Per-axis sizes across slices / hosts groups (DCN); 1 everywhere for one slice."""
  sizes = tuple(int(mesh_cfg.get(k, 1)) for k in DCN_KEYS)
  for k, v in zip(DCN_KEYS, sizes):
    if v < 1:
      raise ConfigError(f"mesh.{k}", f"must be >= 1, got {v}")
  return sizes


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the configured axis sizes against the device count: the full mesh shape.

  `mesh.data/fsdp/tensor` are the sizes within one slice (ICI; -1 = fill the slice) and
  `mesh.dcn_*` how many slices each axis spans (DCN); the mesh axis size is their product.
  """
  dcn = dcn_shape(mesh_cfg)
  slices = math.prod(dcn)
  if num_devices % slices:
    raise ConfigError("mesh.dcn_data", f"{num_devices} devices do not split into the {slices} "
                      f"slices of the dcn_* sizes {dict(zip(DCN_KEYS, dcn))}")
  return tuple(i * d for i, d in zip(ici_shape(mesh_cfg, num_devices // slices), dcn))


def ici_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """The within-slice sizes (-1 = fill) for `num_devices` devices per slice."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ConfigError("mesh", f"at most one axis may be -1 (fill), got {dict(zip(MESH_AXES, sizes))}")
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ConfigError(f"mesh.{a}", f"axis size must be positive or -1, got {s}")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ConfigError(f"mesh.{MESH_AXES[fill[0]]}",
                        f"{num_devices} devices are not divisible by the other axes' product {known}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError("mesh", f"axis sizes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} "
                      f"devices but {num_devices} are available per slice")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The device mesh; with dcn_* > 1 a hybrid mesh whose DCN axes run across slices.

  Slices are TPU slices (`device.slice_index`) or, where all devices share one (GPU clusters,
  CPU test processes), the processes of the job.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  types = (jax.sharding.AxisType.Auto,) * len(shape)
  dcn = dcn_shape(mesh_cfg)
  if math.prod(dcn) > 1:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    ici = ici_shape(mesh_cfg, len(devices) // math.prod(dcn))
    # Granules: TPU slices when there are several, else processes (GPU hosts, CPU test processes).
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_process = len(slices) <= 1 and len({d.process_index for d in devices}) > 1
    try:
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process)
    except ValueError as e:
      raise ConfigError("mesh.dcn_data", f"cannot build a {dict(zip(DCN_KEYS, dcn))} x "
                        f"{dict(zip(MESH_AXES, ici))} hybrid mesh: {e}") from None
    return Mesh(grid, MESH_AXES, axis_types=types)
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=types)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=types)


def logical_to_spec(names: Sequence[str | None] | None, rules) -> P:
  """Logical names of one array -> mesh PartitionSpec. A mesh axis is used at most once per array."""
  if not names:
    return P()
  table: dict[str, Any] = {}
  for name, axes in rules:
    table.setdefault(name, axes)
  used: set[str] = set()
  out = []
  for name in names:
    axes = table.get(name) if name is not None else None
    axes_t = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    axes_t = tuple(a for a in axes_t if a not in used)
    used.update(axes_t)
    out.append(None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t))
  return P(*out)


def _fits(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (e.g. 3 RGB channels over fsdp=4)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(mesh.shape[a] for a in axes_t)
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules):
  """Pure-dict tree of NamedShardings for an (abstract) nnx.State, from each Variable's names."""
  def one(var):
    names = var.get_metadata().get("out_sharding")
    spec = _fits(logical_to_spec(names, rules), var.shape, mesh)
    return NamedSharding(mesh, spec)
  return nnx.to_pure_dict(jax.tree.map(one, abstract_state,
                                      is_leaf=lambda x: isinstance(x, nnx.Variable)))


def optimizer_shardings(tx, tx_state, param_shardings, mesh: Mesh):
  """Shardings of an optax state: moments like their parameters, counters replicated."""
  return optax.tree_map_params(
      tx, lambda _, s: s, tx_state, param_shardings,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def data_parallel_size(mesh: Mesh, rules) -> int:
  spec = logical_to_spec(("batch",), rules)[0]
  axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
  return math.prod(mesh.shape[a] for a in axes)


def batch_axes(rules):
  """The mesh axes of the logical 'batch' dimension (for activation constraints), or None."""
  return logical_to_spec(("batch",), rules)[0]


def similarity_spec(rules) -> P:
  """Spec of a (tokens, codebook) similarity matrix: tokens like the batch, codes over the mesh
  axes of the 'codebook' axis that the batch does not use (models/quantizer.py)."""
  return logical_to_spec(("batch", "codebook"), rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays sharded over the data-parallel axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
          for k, v in local_batch.items()}


def check_batch_divisible(batch_size: int, mesh: Mesh, rules, key: str, where: str = "") -> int:
  """The data-parallel size of `mesh`; a ConfigError naming `key` unless it divides `batch_size`."""
  dp = data_parallel_size(mesh, rules)
  if batch_size <= 0 or batch_size % dp:
    raise ConfigError(key, f"{batch_size} must be a positive multiple of the {dp} data-parallel "
                      f"devices{where}")
  return dp
