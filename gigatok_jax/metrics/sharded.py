"""Frozen evaluation networks (FID Inception, LPIPS) run data-parallel over every device and host.

Why a helper of its own: the evaluation loops hand the same host batch to every process (samples
and reference batches are files every host reads; reconstructions are gathered), and the metrics
are computed on host arrays. `data_parallel` turns such a network into a function of host arrays
whose batch is split over all devices of the mesh (all hosts), with the weights replicated, and
whose output comes back whole on every process, so each process keeps identical statistics and
no device computes more than its share.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gigatok_jax import distributed


def default_mesh() -> Mesh:
  """A 1-D mesh over every device of the job (all hosts)."""
  return Mesh(np.asarray(jax.devices()), ("batch",))


def _global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array that every process holds in full."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def data_parallel(apply: Callable[..., Any], params: Any, mesh: Mesh | None = None
                  ) -> Callable[..., Any]:
  """`apply(params, *batches)` -> a function of host batches (same leading size N on every
  process) returning host outputs (leading size N), computed with the batch over all devices.

  The batch is zero-padded to a multiple of the device count (outputs are cut back to N), so
  evaluation code keeps one compiled shape per batch size.
  """
  mesh = mesh or default_mesh()
  batch = NamedSharding(mesh, P(mesh.axis_names))             # leading dim over every axis
  rep = NamedSharding(mesh, P())
  params = jax.tree.map(lambda x: _global(np.asarray(jax.device_get(x)), rep), params)
  fn = distributed.StartTogether(jax.jit(apply, in_shardings=None, out_shardings=batch),
                                getattr(apply, "__name__", "evaluation network"))
  devices = mesh.devices.size

  def run(*arrays: np.ndarray):
    n = len(arrays[0])
    padded = -(-n // devices) * devices
    inputs = []
    for a in arrays:
      a = np.asarray(a)
      if padded != n:
        a = np.concatenate([a, np.zeros((padded - n,) + a.shape[1:], a.dtype)])
      inputs.append(_global(a, batch))
    out = fn(params, *inputs)
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda y: np.asarray(jax.device_get(y))[:n], out)
  return run
