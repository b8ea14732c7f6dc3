"""Improved precision and recall (Kynkaenniemi et al. 2019) with k = 3, in both protocols' arithmetic.

Each set's manifold is the union of balls around its points; a ball's squared radius is the distance
to the k-th nearest point of its own set, the point itself counting as the 0th (entry k of the
ascending row, as ADM's `ManifoldEstimator.manifold_radii`). precision = fraction of samples inside
the reference manifold; recall = fraction of reference points inside the sample manifold; a point on
a boundary is inside.

Distances (`arithmetic`):
  - 'float32': max(|u|^2 - 2 u.v + |v|^2, 0) in float32 (torch-fidelity's `prc`, protocol
    'pytorch_fid').
  - 'adm': ADM's `DistanceBlock`. Each block of at most 10000 x 10000 distances is computed from
    inputs cast to float16 with every operation's result rounded to float16 (the matmul accumulates
    in float32 and rounds once, as TF's CPU kernel does); if any entry of the block is not finite
    (squared norms above 65504 overflow), the whole block is recomputed in float32. One difference
    remains: TF sums the squared norms in float16 in an order we do not reproduce, so about a
    third of the radii differ by one float16 step, which moves a point on a boundary now and then
    (the fixtures: one sample in 2000, within their tolerance of 0.003).
Memory: one block of distances and its float16 copies (~1.5 GB at 10000 x 10000) plus (block, k+1)
running minima; 50k x 50k runs block by block.
"""

from __future__ import annotations

import numpy as np

BLOCK = 10000          # ADM's row / column batch: the unit of its float16 -> float32 fallback
K = 3                  # neighbourhood size of every protocol
ARITHMETIC = ("adm", "float32")
_F16, _F32 = np.float16, np.float32


def distances_float32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(A, D), (B, D) -> (A, B) float32 squared distances, clipped at 0."""
  a, b = np.asarray(a, _F32), np.asarray(b, _F32)
  d = np.sum(a * a, axis=1)[:, None] - 2 * (a @ b.T) + np.sum(b * b, axis=1)[None, :]
  return np.maximum(d, 0.0)


def _squared_norms_f16(x16: np.ndarray) -> np.ndarray:
  """(N, D) float16 -> (N,) float16: squares rounded to float16, summed in float32, rounded."""
  squares = (x16.astype(_F32) ** 2).astype(_F16).astype(_F32)
  return squares.sum(axis=1).astype(_F16)


def distances_adm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """ADM's float16 distance block with its float32 fallback: (A, D), (B, D) -> (A, B) float32."""
  a16, b16 = np.asarray(a, _F32).astype(_F16), np.asarray(b, _F32).astype(_F16)
  with np.errstate(over="ignore", invalid="ignore"):
    inner = (a16.astype(_F32) @ b16.astype(_F32).T).astype(_F16)               # (A, B)
    d = (_squared_norms_f16(a16)[:, None] - _F16(2) * inner) + _squared_norms_f16(b16)[None, :]
    # TF clips at 0 before its finiteness test, so -inf becomes 0 and keeps the float16 block;
    # NaN (inf - inf) stays NaN here and sends the block to float32.
    d = np.maximum(d, _F16(0))
  if not np.isfinite(d).all():
    return distances_float32(a, b)
  return d.astype(_F32)


def _distance_fn(arithmetic: str):
  if arithmetic == "adm":
    return distances_adm
  if arithmetic == "float32":
    return distances_float32
  raise ValueError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")


def manifold_radii(features: np.ndarray, k: int = K, arithmetic: str = "float32",
                   block_size: int = BLOCK) -> np.ndarray:
  """(N, D) features -> (N,) float32 squared distance to the k-th nearest point of the set."""
  x = np.asarray(features, _F32)
  n = x.shape[0]
  if n <= k:
    raise ValueError(f"need more than k={k} points for k-NN radii, got {n}")
  distances = _distance_fn(arithmetic)
  radii = np.empty(n, _F32)
  for r0 in range(0, n, block_size):
    rows = x[r0:r0 + block_size]
    nearest = np.full((rows.shape[0], k + 1), np.inf, _F32)     # k+1 smallest distances so far
    for c0 in range(0, n, block_size):
      candidates = np.concatenate([nearest, distances(rows, x[c0:c0 + block_size])], axis=1)
      nearest = np.partition(candidates, k, axis=1)[:, :k + 1]
    radii[r0:r0 + block_size] = np.max(nearest, axis=1)
  return radii


def precision_recall(reference_features: np.ndarray, sample_features: np.ndarray, k: int = K,
                     arithmetic: str = "float32", block_size: int = BLOCK) -> tuple[float, float]:
  """(precision, recall) of samples against a reference set; one distance block serves both."""
  ref = np.asarray(reference_features, _F32)
  sam = np.asarray(sample_features, _F32)
  distances = _distance_fn(arithmetic)
  ref_radii = manifold_radii(ref, k, arithmetic, block_size)   # (R,)
  sam_radii = manifold_radii(sam, k, arithmetic, block_size)   # (S,)
  sample_inside = np.zeros(len(sam), bool)      # precision: inside some reference ball
  reference_inside = np.zeros(len(ref), bool)   # recall: inside some sample ball
  for r0 in range(0, len(ref), block_size):
    ref_block_radii = ref_radii[r0:r0 + block_size]
    for s0 in range(0, len(sam), block_size):
      d = distances(ref[r0:r0 + block_size], sam[s0:s0 + block_size])   # (r, s)
      sample_inside[s0:s0 + block_size] |= np.any(d <= ref_block_radii[:, None], axis=0)
      reference_inside[r0:r0 + block_size] |= np.any(d <= sam_radii[None, s0:s0 + block_size], axis=1)
  return float(sample_inside.mean()), float(reference_inside.mean())
