"""One image set against a reference under one evaluation protocol: FID, sFID, IS, precision/recall.

Shared by `--mode=eval` of tokenizers (reconstructions against the originals or a reference batch)
and GPTs (samples against a reference batch), and by the reference-batch command
(`python -m gigatok_jax.convert.reference_batch`). The protocols (docs/evaluation.md):

  protocol       network front end             IS                           P/R distances
  'adm'          TF-1 resize, (x - 128) / 128  parts of 5000, no bias       float16, float32 fallback
  'pytorch_fid'  torch resize, x / 127.5 - 1   torch-fidelity's 10 parts    float32

FID and sFID are the same arithmetic under both (`fid.frechet_distance` on float64 statistics).
Images enter as uint8 (N, H, W, 3); a `FeatureSet` keeps running statistics of the pool3 and
spatial features, and, when asked, the logits (IS) and pool rows (precision/recall).
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import numpy as np

from gigatok_jax import fileio
from gigatok_jax.errors import ConfigError
from gigatok_jax.metrics import fid
from gigatok_jax.metrics import inception_score as isc
from gigatok_jax.metrics import precision_recall as prc

PROTOCOLS = ("adm", "pytorch_fid")
PR_ARITHMETIC = {"adm": "adm", "pytorch_fid": "float32"}


class Measured(NamedTuple):
  """Host arrays measured on a batch (`models.inception.Measurements`, as numpy)."""
  pool: np.ndarray     # (N, 2048)
  spatial: np.ndarray  # (N, 2023)
  logits: np.ndarray   # (N, 1008), no bias


MeasureFn = Callable[[np.ndarray], Measured]   # uint8 (N, H, W, 3) -> Measured


def check_protocol(protocol: str) -> str:
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  return protocol


def inception_measure(path: str, protocol: str, batch_size: int, mesh=None) -> MeasureFn:
  """The converted FID Inception at `path` as a MeasureFn, data-parallel over every device.

  Batches are zero-padded to `batch_size` (one compiled shape) and cut back after.
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from gigatok_jax.convert import inception as inception_convert  # pylint: disable=import-outside-toplevel
  from gigatok_jax.metrics import sharded  # pylint: disable=import-outside-toplevel
  check_protocol(protocol)
  graph, params = nnx.split(inception_convert.load(path))
  apply = sharded.data_parallel(lambda p, x: tuple(nnx.merge(graph, p).measure(x, protocol)),
                                params, mesh)

  def measure(images: np.ndarray) -> Measured:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    n = len(images)
    if n > batch_size:
      raise ValueError(f"batch of {n} images is larger than the evaluation batch {batch_size}")
    padded = np.zeros((batch_size,) + images.shape[1:], np.uint8)
    padded[:n] = images
    return Measured(*(np.asarray(a)[:n] for a in apply(padded)))
  return measure


class FeatureSet:
  """Streaming statistics of one image set; `keep_logits` / `keep_pool` hold rows for IS / P/R."""

  def __init__(self, *, keep_logits: bool = False, keep_pool: bool = False):
    self.pool_stats, self.spatial_stats = fid.FeatureStats(), fid.FeatureStats()
    self._logits: list[np.ndarray] | None = [] if keep_logits else None
    self._pool: list[np.ndarray] | None = [] if keep_pool else None

  def add(self, measured: Measured, mask: np.ndarray | None = None) -> "FeatureSet":
    pool, spatial, logits = (np.asarray(a) for a in measured)
    if mask is not None:
      mask = np.asarray(mask, bool)
      pool, spatial, logits = pool[mask], spatial[mask], logits[mask]
    self.pool_stats.update(pool)
    self.spatial_stats.update(spatial)
    if self._logits is not None:
      self._logits.append(np.asarray(logits, np.float32))
    if self._pool is not None:
      self._pool.append(np.asarray(pool, np.float32))
    return self

  @property
  def count(self) -> int:
    return self.pool_stats.count

  @property
  def logits(self) -> np.ndarray | None:
    return None if self._logits is None else np.concatenate(self._logits)

  @property
  def pool(self) -> np.ndarray | None:
    return None if self._pool is None else np.concatenate(self._pool)

  def statistics(self) -> dict:
    """{"mu", "sigma", "mu_s", "sigma_s"}: the arrays of an ADM reference batch."""
    return {"mu": self.pool_stats.mu, "sigma": self.pool_stats.sigma,
            "mu_s": self.spatial_stats.mu, "sigma_s": self.spatial_stats.sigma}


def measure_batches(measure: MeasureFn, batches: Iterable[np.ndarray], **keep) -> FeatureSet:
  """Runs `measure` over uint8 image batches into a new FeatureSet (keep_logits / keep_pool)."""
  features = FeatureSet(**keep)
  for images in batches:
    features.add(measure(images))
  return features


def compare(samples: FeatureSet, reference: dict, protocol: str, *,
            reference_pool: np.ndarray | None = None) -> dict:
  """Scores of `samples` against `reference` ({"mu", "sigma"} and optionally {"mu_s", "sigma_s"}).

  Returns fid; sfid when both sides have spatial statistics; inception_score(_std) when the
  samples kept logits; precision / recall when the samples kept pool rows and `reference_pool`
  is given.
  """
  check_protocol(protocol)
  result = {"protocol": protocol, "num_samples": samples.count,
            "fid": fid.frechet_distance(samples.pool_stats.mu, samples.pool_stats.sigma,
                                        reference["mu"], reference["sigma"])}
  if "mu_s" in reference and samples.spatial_stats.count:
    result["sfid"] = fid.frechet_distance(samples.spatial_stats.mu, samples.spatial_stats.sigma,
                                          reference["mu_s"], reference["sigma_s"])
  logits, pool = samples.logits, samples.pool          # each concatenated once
  if logits is not None:
    scores = isc.inception_score(logits, protocol)
    result["inception_score"] = scores["inception_score"]
    result["inception_score_std"] = scores["inception_score_std"]
  if reference_pool is not None and pool is not None:
    result["precision"], result["recall"] = prc.precision_recall(
        reference_pool, pool, arithmetic=PR_ARITHMETIC[protocol])
  return result


def set_size_problem(n: int, protocol: str, precision_recall: bool) -> str | None:
  """Why `n` images are too few for what the protocol computes, or None."""
  if n < 2:
    return f"{n} image(s): a covariance (FID) needs at least 2"
  if precision_recall and n <= prc.K:
    return f"{n} images: precision/recall's k-NN radii need more than k={prc.K}"
  if protocol == "pytorch_fid" and n < isc.TORCH_FIDELITY_SPLITS:
    return f"{n} images: protocol 'pytorch_fid' cuts the Inception Score into 10 parts"
  return None


def inception_record(path: str) -> dict:
  """{"path", "sha256"} of the converted Inception file the numbers were measured with."""
  return {"path": fileio.resolve(path), "sha256": fileio.sha256_file(path)}


def check_reference(reference: dict, protocol: str, *, precision_recall: bool = False,
                    key: str = "eval.fid_reference") -> None:
  """ConfigError (naming `key`) for a reference batch this evaluation cannot use: one measured
  under another protocol (its FID would be meaningless), or, for precision/recall, one without
  enough `arr_0` images."""
  measured = reference_protocol(reference)
  if measured != protocol:
    raise ConfigError(key, f"{reference['path']} was measured under protocol '{measured}', this "
                      f"evaluation uses eval.protocol='{protocol}'; use a reference of the same "
                      "protocol (python -m gigatok_jax.convert.reference_batch)")
  if precision_recall and not reference.get("num_images"):
    raise ConfigError(key, f"{reference['path']} has no arr_0 images, which precision/recall "
                      "needs (or set eval.precision_recall=False)")
  if precision_recall and reference["num_images"] <= prc.K:
    raise ConfigError(key, f"{reference['path']}: {reference['num_images']} images are too few "
                      f"for precision/recall (more than {prc.K} needed)")


def reference_protocol(reference: dict) -> str:
  """The protocol a reference batch was measured under: its `protocol` entry, 'adm' without one
  (ADM's own batches, e.g. VIRTUAL_imagenet256_labeled.npz, carry none)."""
  value = reference.get("protocol")
  return "adm" if value is None else str(np.asarray(value))


def summary_line(result: dict, fid_name: str = "gFID") -> str:
  """'gFID 3.210, sFID 5.10, IS 250.3, precision 0.81, recall 0.58' from what `compare` returned."""
  parts = [f"{fid_name} {result['fid']:.3f}"]
  if "sfid" in result:
    parts.append(f"sFID {result['sfid']:.3f}")
  if "inception_score" in result:
    parts.append(f"IS {result['inception_score']:.2f}")
  if "precision" in result:
    parts.append(f"precision {result['precision']:.4f}, recall {result['recall']:.4f}")
  return ", ".join(parts)
