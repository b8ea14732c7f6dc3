"""Fixed-size batches for the API's jitted calls: each function compiles once per batch size.

Inputs of any length are cut into chunks of `batch_size` rows; the last chunk is padded with copies
of its first row (always a valid input: a real image, real codes, a real class) and the padding is
dropped from the outputs. The batch is sharded over the mesh's data-parallel axes.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np

from gigatok_jax import parallel


def round_batch_size(batch_size: int, mesh: jax.sharding.Mesh, rules) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel device count."""
  dp = parallel.data_parallel_size(mesh, rules)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return math.ceil(batch_size / dp) * dp


def chunks(n: int, batch_size: int):
  """(start, stop) of each batch of `n` rows."""
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def pad_rows(rows: np.ndarray, batch_size: int) -> np.ndarray:
  """`rows` (k <= batch_size, ...) padded to batch_size rows with copies of row 0."""
  if len(rows) == batch_size:
    return rows
  fill = np.repeat(rows[:1], batch_size - len(rows), axis=0)
  return np.concatenate([rows, fill])


def map_batches(fn: Callable[..., tuple], inputs: np.ndarray, batch_size: int,
                mesh: jax.sharding.Mesh) -> list[np.ndarray]:
  """fn(padded batch) -> tuple of arrays with a leading batch axis, over all of `inputs`;
  returns the per-output concatenation with the padding removed (host numpy)."""
  outs: list[list[np.ndarray]] = []
  with jax.set_mesh(mesh):
    for start, stop in chunks(len(inputs), batch_size):
      result = jax.device_get(fn(pad_rows(inputs[start:stop], batch_size)))
      if not outs:
        outs = [[] for _ in result]
      for acc, r in zip(outs, result):
        acc.append(np.asarray(r)[:stop - start])
  return [np.concatenate(acc) for acc in outs]
