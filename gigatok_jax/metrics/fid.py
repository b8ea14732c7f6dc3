"""FID and sFID statistics and distances, and ADM-layout reference batches.

  - FID uses pool_3 features (2048-d), sFID the spatial mixed_6/conv features (2023-d). Both are the Frechet
    distance between Gaussians fitted with the sample covariance (N - 1 denominator, `np.cov` semantics), the
    arithmetic of the ADM evaluator's `FIDStatistics.frechet_distance` (tests/test_adm_fixtures.py: <= 2.2e-8
    relative on its own outputs). The Inception Score and precision/recall live in `inception_score.py` and
    `precision_recall.py`; `evaluator.py` runs an evaluation protocol end to end (docs/evaluation.md).
  - Reference batches are `.npz` files: `arr_0` uint8 (N, H, W, 3) images and precomputed `mu`, `sigma`
    (pool) and `mu_s`, `sigma_s` (spatial).

50k-image runs never hold all images at once: `FeatureStats` accumulates mean and covariance batch by batch,
`iter_reference_images` streams `arr_0` out of the zip, and the distance matrices for precision/recall are
built block by block (precision_recall.py). Results carry the sha256 of every reference file they were computed against, because a
reference batch silently swapped for another gives a different FID and nothing else shows it.

Every file is read and written through `fileio`, so samples and references may live on gs:// too (read with
ranged requests: streaming `arr_0` never downloads more than the batches asked for plus the read-ahead).
"""

from __future__ import annotations

import json
import zipfile
from typing import Iterator, Sequence

import numpy as np
from scipy import linalg

from gigatok_jax import fileio

# ---------------------------------------------------------------------------------------------- mean/covariance


class FeatureStats:
  """Streaming mean and covariance of feature vectors, in float64.

  Batches are combined with Chan et al.'s parallel update (batch mean and centred scatter, then a correction
  for the shift between means). Unlike sum-of-outer-products it does not cancel catastrophically when the
  features have a large mean relative to their spread, and `merge` combines stats from several hosts.
  """

  def __init__(self, dim: int | None = None):
    self.count = 0
    self.dim = dim
    self._mean = None  # (D,) float64
    self._scatter = None  # (D, D) float64: sum over samples of (x - mean)(x - mean)^T

  def update(self, features: np.ndarray) -> "FeatureStats":
    """Adds a (B, D) batch (anything with B leading rows is flattened to (B, -1))."""
    x = np.asarray(features, np.float64)
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
      return self
    batch_mean = x.mean(axis=0)
    centred = x - batch_mean
    self._combine(x.shape[0], batch_mean, centred.T @ centred)
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Adds the samples another accumulator has seen (e.g. one per host)."""
    if other.count:
      self._combine(other.count, other._mean, other._scatter)
    return self

  def _combine(self, n_b: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> None:
    if self.dim is None:
      self.dim = mean_b.shape[0]
    if mean_b.shape[0] != self.dim:
      raise ValueError(f"feature dimension {mean_b.shape[0]} != {self.dim} seen before")
    if self.count == 0:
      self.count, self._mean, self._scatter = n_b, mean_b.copy(), scatter_b.copy()
      return
    n_a, n = self.count, self.count + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (n_a * n_b / n)
    self.count = n

  @property
  def mu(self) -> np.ndarray:
    if self.count == 0:
      raise ValueError("FeatureStats has seen no features")
    return self._mean.copy()

  @property
  def sigma(self) -> np.ndarray:
    """Sample covariance (N - 1 denominator), as np.cov(features, rowvar=False)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
    return self._scatter / (self.count - 1)


def stats_from_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> mu (D,), sigma (D, D), in float64 with np.cov semantics."""
  stats = FeatureStats().update(features)
  return stats.mu, stats.sigma


# ----------------------------------------------------------------------------------------------- Frechet distance


def _psd_eigenvalues(matrix: np.ndarray, name: str, vectors: bool = True):
  """Eigenvalues (and eigenvectors) of a symmetric PSD matrix; rounding-level negative eigenvalues become 0.

  ValueError if an eigenvalue is below -1e-5 x the largest: the matrix is not a covariance at all.
  """
  symmetric = (matrix + matrix.T) / 2
  values, vecs = linalg.eigh(symmetric) if vectors else (linalg.eigvalsh(symmetric), None)
  scale = max(float(np.max(np.abs(values))), 1e-300)
  if values.min() < -1e-5 * scale:
    raise ValueError(f"{name} is not positive semi-definite (eigenvalue {values.min():.3g}, "
                     f"largest {scale:.3g}): not a covariance matrix")
  return np.clip(values, 0.0, None), vecs


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr(sqrt(sigma1 @ sigma2)) for PSD sigma1, sigma2, without a general matrix square root.

  sigma1 @ sigma2 = S (S sigma2) with S = sqrt(sigma1), and (S sigma2) S = S sigma2 S is symmetric PSD. AB and
  BA share their non-zero eigenvalues, so the eigenvalues of sigma1 @ sigma2 are those of S sigma2 S: real and
  >= 0, and the trace of the principal square root is the sum of their square roots. Two symmetric
  eigendecompositions replace scipy's Schur-based sqrtm, which loses accuracy or returns NaN/complex values
  when the product is (near-)singular, e.g. 2048-d features from fewer than 2049 images.
  """
  values1, vectors1 = _psd_eigenvalues(np.asarray(sigma1, np.float64), "sigma1")
  _psd_eigenvalues(np.asarray(sigma2, np.float64), "sigma2", vectors=False)  # validation only
  sqrt1 = (vectors1 * np.sqrt(values1)) @ vectors1.T  # (D, D)
  middle = sqrt1 @ np.asarray(sigma2, np.float64) @ sqrt1  # (D, D), symmetric PSD
  values = linalg.eigvalsh((middle + middle.T) / 2)
  return float(np.sum(np.sqrt(np.clip(values, 0.0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "eigh") -> float:
  """||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrt(sigma1 sigma2)): FID on pool stats, sFID on spatial.

  method="eigh" (default) uses `trace_sqrt_product`: exact for PSD inputs, finite for rank-deficient ones,
  and `eps` is unused. Rounding can leave a value like -1e-12 for identical stats; it is reported as 0.
  method="sqrtm" reproduces the ADM evaluator / pytorch-fid arithmetic: scipy sqrtm of the product, retried
  with eps added to both diagonals if that is not finite, then the imaginary part dropped (ValueError if its
  diagonal exceeds 1e-3). Use it to compare digit for digit with numbers from those tools.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                     f"{sigma2.shape}")
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
  elif method == "sqrtm":
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"sqrtm has a large imaginary component: {np.max(np.abs(covmean.imag)):.3g}")
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
  distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
  return max(distance, 0.0) if method == "eigh" else distance


# ------------------------------------------------------------------------------------ reference batches and sha256


def write_reference(path: str, *, mu: np.ndarray, sigma: np.ndarray, images: np.ndarray | None = None,
                    **extra: np.ndarray) -> str:
  """Writes an ADM-layout reference batch (uncompressed `.npz`) and returns its sha256.

  Keys: `mu` (D,), `sigma` (D, D), optional `arr_0` uint8 (N, H, W, 3) images, and any `extra` arrays such as
  `mu_s` / `sigma_s` (sFID). Written to `path` exactly (no `.npz` appended) through a temporary file and a
  rename, so a crash never leaves a half-written reference behind.
  """
  mu, sigma = np.asarray(mu), np.asarray(sigma)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise ValueError(f"{path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
  if ("mu_s" in extra) != ("sigma_s" in extra):
    raise ValueError(f"{path}: mu_s and sigma_s go together")
  arrays = {"mu": mu, "sigma": sigma, **{name: np.asarray(value) for name, value in extra.items()}}
  if images is not None:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"{path}: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    arrays["arr_0"] = images
  with fileio.atomic_write(path, "wb") as f:
    np.savez(f, **arrays)
  return fileio.sha256_file(path)


def _open_npy_member(archive: zipfile.ZipFile, key: str):
  """Opens `key`.npy inside an .npz; returns (file object past the header, shape, dtype)."""
  fp = archive.open(key + ".npy")
  version = np.lib.format.read_magic(fp)
  read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
  shape, fortran_order, dtype = read_header(fp)
  if fortran_order or dtype.hasobject:
    fp.close()
    raise ValueError(f"{key}: only C-ordered plain arrays can be streamed")
  return fp, shape, dtype


def read_reference(path: str, *, load_images: bool = False) -> dict:
  """Reads a reference batch: {"path", "sha256", "mu", "sigma", ["mu_s", "sigma_s"], other arrays,
  "num_images"}, plus "arr_0" if load_images (otherwise stream it with `iter_reference_images`).

  ValueError names the file and the missing key when `mu` or `sigma` is absent (e.g. a samples file passed
  where a reference was expected) or when only one of `mu_s` / `sigma_s` is present.
  """
  result = {"path": fileio.resolve(path), "sha256": fileio.sha256_file(path), "num_images": 0}
  with fileio.open_read(path) as f, np.load(f) as npz:
    keys = set(npz.files)
    for key in ("mu", "sigma"):
      if key not in keys:
        raise ValueError(f"{path}: reference batch has no '{key}' array (keys: {sorted(keys)})")
    if ("mu_s" in keys) != ("sigma_s" in keys):
      missing = "sigma_s" if "mu_s" in keys else "mu_s"
      raise ValueError(f"{path}: reference batch has no '{missing}' array (keys: {sorted(keys)})")
    for key in sorted(keys - {"arr_0"}):
      result[key] = npz[key]
    if load_images and "arr_0" in keys:
      result["arr_0"] = npz["arr_0"]
  if "arr_0" in keys:
    with fileio.open_read(path) as f, zipfile.ZipFile(f) as archive:
      fp, shape, _ = _open_npy_member(archive, "arr_0")
      fp.close()
    result["num_images"] = int(shape[0])
  return result


def read_reference_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of `arr_0` in an .npz, read from the header only; ValueError when absent."""
  with fileio.open_read(path) as f, zipfile.ZipFile(f) as archive:
    if "arr_0.npy" not in archive.namelist():
      raise ValueError(f"{path} has no arr_0 array (keys: {sorted(n[:-4] for n in archive.namelist())})")
    fp, shape, dtype = _open_npy_member(archive, "arr_0")
    fp.close()
  return tuple(int(d) for d in shape), dtype


def iter_reference_images(path: str, batch_size: int = 500) -> Iterator[np.ndarray]:
  """Yields `arr_0` of an .npz in (<= batch_size, H, W, C) batches, reading only one batch at a time."""
  with fileio.open_read(path) as f, zipfile.ZipFile(f) as archive:
    fp, shape, dtype = _open_npy_member(archive, "arr_0")
    with fp:
      row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
      for start in range(0, shape[0], batch_size):
        rows = min(batch_size, shape[0] - start)
        buffer = fp.read(rows * row_bytes)
        if len(buffer) != rows * row_bytes:
          raise ValueError(f"{path}: arr_0 is truncated at image {start}")
        yield np.frombuffer(buffer, dtype).reshape((rows, *shape[1:]))


def result_with_references(metrics: dict, references: Sequence[str | dict]) -> dict:
  """{"metrics": ..., "references": [{"path", "sha256"}, ...]}: what a result JSON records.

  `references` are paths (hashed here) or dicts from `read_reference` (their sha256 is reused).
  """
  records = []
  for ref in references:
    if isinstance(ref, dict):
      records.append({"path": ref["path"], "sha256": ref["sha256"]})
    else:
      records.append({"path": fileio.resolve(ref), "sha256": fileio.sha256_file(ref)})
  return {"metrics": {k: float(v) if isinstance(v, (np.floating, np.integer)) else v for k, v in metrics.items()},
          "references": records}


def write_result_json(path: str, metrics: dict, references: Sequence[str | dict]) -> dict:
  """Writes `result_with_references(...)` as indented JSON and returns it."""
  record = result_with_references(metrics, references)
  with fileio.atomic_write(path) as f:
    json.dump(record, f, indent=2)
  return record
