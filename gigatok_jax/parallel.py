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



def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the configured axis sizes (-1 = fill) against the device count."""
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
                      f"devices but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


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


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays sharded over the data-parallel axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
          for k, v in local_batch.items()}
