"""`--mode=eval` for GPT recipes: gFID, IS, precision/recall of sampled images, validation loss.

Reads a `--mode=sample` output (`eval.samples`, default: the newest samples_*.npz of
<workdir>/samples) in batches, never all at once, takes FID Inception pool3 features and logits,
and compares them with the reference batch `eval.fid_reference` (ADM layout: mu / sigma, and
arr_0 images for precision/recall, whose features are computed here in the same streamed way).
Adds the validation loss of the latest GPT checkpoint when data.eval_codes_path is set. The JSON
(<workdir>/eval/gpt_<samples tag>.json) carries the sampling settings of the samples' JSON, the
checkpoint steps and the sha256 of the samples and reference files.
"""

from __future__ import annotations

import time

import numpy as np

from gigatok_jax import console, fileio, runs
from gigatok_jax.errors import ConfigError
from gigatok_jax.metrics import fid, sharded


def newest_samples(workdir: str) -> str:
  # Newest by modification time (whole seconds on gs://: ties go to the later name).
  found = sorted(fileio.glob(fileio.join(runs.samples_dir(workdir), "samples_*.npz")),
                 key=lambda p: (fileio.mtime(p), p))
  if not found:
    raise ConfigError("eval.samples", f"no samples_*.npz in {runs.samples_dir(workdir)}: run --mode=sample "
                      "first or set eval.samples")
  return found[-1]


def stream_features(features_fn, batches, *, keep_pool: bool):
  """Runs `features_fn` (uint8 (N,H,W,3) -> (pool (N, 2048), logits (N, 1008))) over batches."""
  stats, probs, pools = fid.FeatureStats(), [], []
  for images in batches:
    pool, logits = features_fn(images)
    stats.update(pool)
    z = logits - logits.max(-1, keepdims=True)
    probs.append(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
    if keep_pool:
      pools.append(pool.astype(np.float32))
  return stats, np.concatenate(probs), (np.concatenate(pools) if keep_pool else None)


def inception_features(path: str, batch_size: int):
  """uint8 images -> (pool3, logits) with the converted FID Inception at `path`."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from gigatok_jax.convert import inception as inception_convert  # pylint: disable=import-outside-toplevel
  graph, params = nnx.split(inception_convert.load(path))
  # Batch split over every device of every host; each process gets all features back.
  apply = sharded.data_parallel(lambda p, x: tuple(nnx.merge(graph, p)(x)), params)

  def fn(images: np.ndarray):
    n = len(images)
    x = np.zeros((batch_size,) + images.shape[1:], np.float32)   # one compiled shape
    x[:n] = images.astype(np.float32) / 127.5 - 1.0
    pool, logits = apply(x)
    return pool[:n], logits[:n]
  return fn


def run(config, workdir: str, *, progress: bool = True, options=None) -> dict:
  """`options['features_fn']` replaces the Inception network (tests)."""
  del progress
  features_fn = (options or {}).get("features_fn")
  e = config.eval
  if not e.fid_reference:
    raise ConfigError("eval.fid_reference", "is empty; set it to the reference batch .npz "
                      "(e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
  if features_fn is None:
    if not e.inception_path:
      raise ConfigError("eval.inception_path", "is empty; convert pytorch-fid's Inception with "
                        "python -m gigatok_jax.convert.inception and set it")
    features_fn = inception_features(e.inception_path, e.batch_size)
  samples = e.samples or newest_samples(workdir)
  t0 = time.time()
  sample_batches = fid.iter_reference_images(samples, batch_size=e.batch_size)
  s_stats, s_probs, s_pool = stream_features(features_fn, sample_batches,
                                             keep_pool=e.precision_recall)
  ref = fid.read_reference(e.fid_reference)
  result = {"samples": {"path": samples, "sha256": fileio.sha256_file(samples)},
            "reference": {"path": e.fid_reference, "sha256": ref["sha256"]},
            "num_samples": s_stats.count}
  result["fid"] = fid.frechet_distance(s_stats.mu, s_stats.sigma, ref["mu"], ref["sigma"])
  result["inception_score"], result["inception_score_std"] = fid.inception_score(s_probs)
  if e.precision_recall:
    if not ref.get("num_images"):
      raise ConfigError("eval.fid_reference", f"{e.fid_reference} has no arr_0 images, which "
                        "precision/recall needs (or set eval.precision_recall=False)")
    _, _, r_pool = stream_features(features_fn, fid.iter_reference_images(
        e.fid_reference, batch_size=e.batch_size), keep_pool=True)
    result["precision"], result["recall"] = fid.precision_recall(r_pool, s_pool)
  settings_path = samples[:-4] + ".json"
  if fileio.isfile(settings_path):
    result["sample_settings"] = fileio.read_json(settings_path)
  if config.data.eval_codes_path:
    result.update(validation_loss(config, workdir))
  result["seconds"] = round(time.time() - t0, 2)
  tag = fileio.basename(samples)[len("samples_"):-4]
  out = result["json"] = runs.save_eval(workdir, f"gpt_{tag}", result)
  console.info(f"gFID {result['fid']:.3f}, IS {result['inception_score']:.2f} over "
                 f"{result['num_samples']} samples ({fileio.basename(samples)}); {out}")
  return result


def validation_loss(config, workdir: str) -> dict:
  """Validation loss / accuracy of the latest GPT checkpoint (the trainer's own evaluation)."""
  import jax  # pylint: disable=import-outside-toplevel
  from gigatok_jax import inference, parallel  # pylint: disable=import-outside-toplevel
  from gigatok_jax.train import gpt  # pylint: disable=import-outside-toplevel
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh))
  step_fn = gpt.jitted_eval_step(loaded.spec, loaded.mesh, loaded.rules)
  with jax.set_mesh(loaded.mesh):
    values = gpt.validation(config, loaded.mesh, loaded.params, step_fn) or {}
  return {"gpt_step": loaded.step, **values}
