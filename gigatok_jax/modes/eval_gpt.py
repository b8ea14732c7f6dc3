"""`--mode=eval` for GPT recipes: gFID, sFID, IS, precision/recall of sampled images, validation loss.

Reads a `--mode=sample` output (`eval.samples`, default: the newest samples_*.npz of
<workdir>/samples) in batches, never all at once, measures it with the FID Inception under
`eval.protocol` ('adm' or 'pytorch_fid', metrics/evaluator.py) and compares it with the reference
batch `eval.fid_reference` (ADM layout: mu / sigma, mu_s / sigma_s for sFID, and arr_0 images for
precision/recall, whose features are computed here in the same streamed way). A reference measured
under the other protocol is refused.
Adds the validation loss of the latest GPT checkpoint when data.eval_codes_path is set. The JSON
(<workdir>/eval/gpt_<samples tag>.json) carries the sampling settings of the samples' JSON, the
checkpoint steps and the sha256 of the samples and reference files.
"""

from __future__ import annotations

import time

import numpy as np

from gigatok_jax import console, fileio, runs
from gigatok_jax.errors import ConfigError, DataError
from gigatok_jax.metrics import evaluator, fid


def newest_samples(workdir: str) -> str:
  # Newest by modification time (whole seconds on gs://: ties go to the later name).
  found = sorted(fileio.glob(fileio.join(runs.samples_dir(workdir), "samples_*.npz")),
                 key=lambda p: (fileio.mtime(p), p))
  if not found:
    raise ConfigError("eval.samples", f"no samples_*.npz in {runs.samples_dir(workdir)}: run --mode=sample "
                      "first or set eval.samples")
  return found[-1]


def run(config, workdir: str, *, progress: bool = True, options=None) -> dict:
  """`options['features_fn']` (a metrics.evaluator.MeasureFn) replaces the Inception network (tests)."""
  del progress
  measure = (options or {}).get("features_fn")
  e = config.eval
  protocol = evaluator.check_protocol(e.protocol)
  if not e.fid_reference:
    raise ConfigError("eval.fid_reference", "is empty; set it to the reference batch .npz "
                      "(e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
  ref = fid.read_reference(e.fid_reference)
  evaluator.check_reference(ref, protocol, precision_recall=e.precision_recall)
  if measure is None:
    if not e.inception_path:
      raise ConfigError("eval.inception_path", "is empty; convert the FID Inception with "
                        "python -m gigatok_jax.convert.inception and set it")
    measure = evaluator.inception_measure(e.inception_path, protocol, e.batch_size)
  samples = e.samples or newest_samples(workdir)
  shape, dtype = fid.read_reference_header(samples)
  if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
    raise DataError(f"{samples}: arr_0 must be uint8 (N, H, W, 3) images, got {dtype} {shape}")
  problem = evaluator.set_size_problem(shape[0], protocol, e.precision_recall)
  if problem:
    raise ConfigError("eval.samples", f"{samples}: {problem}")
  t0 = time.time()
  sample_set = evaluator.measure_batches(
      measure, fid.iter_reference_images(samples, batch_size=e.batch_size), keep_logits=True,
      keep_pool=e.precision_recall)
  reference_pool = None
  if e.precision_recall:
    reference_pool = evaluator.measure_batches(
        measure, fid.iter_reference_images(e.fid_reference, batch_size=e.batch_size),
        keep_pool=True).pool
  result = {"samples": {"path": samples, "sha256": fileio.sha256_file(samples)},
            "reference": {"path": e.fid_reference, "sha256": ref["sha256"]},
            "inception": (evaluator.inception_record(e.inception_path) if e.inception_path
                          and not (options or {}).get("features_fn") else "stand-in (tests)"),
            **evaluator.compare(sample_set, ref, protocol, reference_pool=reference_pool)}
  settings_path = samples[:-4] + ".json"
  if fileio.isfile(settings_path):
    result["sample_settings"] = fileio.read_json(settings_path)
  if config.data.eval_codes_path:
    result.update(validation_loss(config, workdir))
  result["seconds"] = round(time.time() - t0, 2)
  tag = fileio.basename(samples)[len("samples_"):-4]
  out = result["json"] = runs.save_eval(workdir, f"gpt_{tag}", result)
  console.info(f"{evaluator.summary_line(result)} over {result['num_samples']} samples "
               f"({fileio.basename(samples)}, protocol {protocol}); {out}")
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
