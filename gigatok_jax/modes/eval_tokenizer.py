"""`--mode=eval` for tokenizer recipes: reconstruction metrics over the eval split.

Streams `eval.num_images` images of the eval split (0 = all) through the latest checkpoint in
batches of `eval.batch_size` sharded over the devices, and reports LPIPS-VGG (when
`teachers.lpips_path` names a converted LPIPS file), PSNR and SSIM (skimage
conventions, uint8 scale; `image_metrics.py`), codebook usage (distinct codes used / codebook size)
and code perplexity (exp of the entropy of the code histogram) over all those images. Nothing but
running sums and the code histogram is kept, so 50k images need no more memory than one batch.
Writes <workdir>/eval/tokenizer_<step>.json with every setting that produced the numbers.

A tokenizer trained with nested dropout (`model.nested_dropout`) is also scored from each shorter
prefix length it was trained on (PSNR, SSIM, and rFID when the Inception is configured): the
JSON's `per_prefix` list, <workdir>/eval/tokens_<step>.png (PSNR against tokens decoded) and
<workdir>/eval/tokens_<step>_grid.png: the first 8 originals, then one row of their
reconstructions per length, shortest first.

rFID, sFID, IS and precision/recall (when `eval.inception_path` names a converted FID Inception
file), measured under `eval.protocol` (metrics/evaluator.py): the reconstructions' features are
accumulated (streaming mean / covariance) and compared with `eval.fid_reference` (an ADM-style
`.npz`; its sha256 goes into the JSON) or, when that is empty, with the originals' own features,
measured in the same pass (the usual rFID protocol when the reference set is the eval split).
Precision/recall (`eval.precision_recall`) keep every pool row of both sets (8 KB per image each).
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from gigatok_jax import console, distributed, fileio, images as image_lib, inference, parallel, runs
from gigatok_jax.data import pipeline
from gigatok_jax.errors import ConfigError
from gigatok_jax.metrics import evaluator, fid, sharded
from gigatok_jax.metrics import image as image_metrics
from gigatok_jax.metrics.codes import code_statistics
from gigatok_jax.models.tokenizer import num_tokens


def _measure(config, mesh) -> evaluator.MeasureFn:
  """The FID Inception of `eval.inception_path` under `eval.protocol` (tests replace this)."""
  return evaluator.inception_measure(config.eval.inception_path, config.eval.protocol,
                                     config.eval.batch_size, mesh)


def _lpips_distance(path: str, mesh):
  """A function (images, reconstructions) in [-1, 1] -> (N,) LPIPS-VGG distances (host arrays)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from gigatok_jax.convert import lpips as lpips_convert  # pylint: disable=import-outside-toplevel
  graph, params = nnx.split(lpips_convert.load_lpips(path))
  return sharded.data_parallel(lambda p, a, b: nnx.merge(graph, p)(a, b).reshape(a.shape[0]),
                               params, mesh)


GRID_IMAGES = 8     # images per row of the prefix grid (originals, then one row per length)


def _prefix_lengths(config) -> list[int]:
  """The shorter token counts a nested-dropout tokenizer is scored at (all of its lengths below
  the full count, which the main pass scores)."""
  full = num_tokens(config.model, config.data.image_size)
  return [k for k in (config.model.get("nested_dropout", ()) or ()) if k < full]


def _gathered(x) -> np.ndarray:
  """A global output array as one host array (multi-process: gathered from every process)."""
  if not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _save_prefix_plot(workdir: str, step: int, rows: list[dict], seen: int) -> str:
  """eval/tokens_<step>.png: PSNR against the number of tokens decoded."""
  from gigatok_jax import plots  # pylint: disable=import-outside-toplevel
  image = plots.tokens_plot([r["num_tokens"] for r in rows], [r["psnr"] for r in rows],
                            y_label="PSNR (dB)",
                            title=f"step {step}: PSNR of {seen} eval images vs tokens decoded")
  return image_lib.save_png(image, runs.eval_path(workdir, f"tokens_{step:08d}", "png"))


def run(config, workdir: str, *, progress: bool = True, options=None, devices=None) -> dict:
  del options
  e = config.eval
  mesh = parallel.make_mesh(config.mesh, devices)
  tok = inference.load(config, workdir, mesh)
  params, step = tok.params, tok.step
  prefixes = _prefix_lengths(config)
  # One encode per batch; each prefix length (none without nested dropout) decodes from the same
  # quantized tokens.
  reconstruct = distributed.StartTogether(
      inference.reconstruct_prefixes_fn(tok.spec, tuple(prefixes)), "reconstruct", config)
  num = None if e.num_images <= 0 else e.num_images
  it = pipeline.make_eval_iterator(config.data, batch_size=e.batch_size, num_images=num,
                                   batch_size_key="eval.batch_size")
  available = len(pipeline.make_source(config.data, "eval"))
  n_total = available if num is None else min(num, available)
  protocol = evaluator.check_protocol(e.protocol)
  problem = evaluator.set_size_problem(n_total, protocol, e.precision_recall) if e.inception_path else None
  if problem:
    raise ConfigError("eval.num_images", f"{problem} (or set eval.precision_recall=False)"
                      if "precision" in problem else problem)
  reference = fid.read_reference(e.fid_reference) if e.inception_path and e.fid_reference else None
  if reference is not None:
    evaluator.check_reference(reference, protocol, precision_recall=e.precision_recall)
  measure = _measure(config, mesh) if e.inception_path else None
  lpips = _lpips_distance(config.teachers.lpips_path, mesh) if config.teachers.lpips_path else None
  recon_set = evaluator.FeatureSet(keep_logits=True, keep_pool=e.precision_recall)
  original_set = evaluator.FeatureSet(keep_pool=e.precision_recall)
  sums = {"psnr": 0.0, "ssim": 0.0}
  prefix_sums = {k: {"psnr": 0.0, "ssim": 0.0} for k in prefixes}
  full_count = num_tokens(config.model, config.data.image_size)
  grid_rows: dict[int, np.ndarray] = {}        # 0: originals; k: decoded from k tokens
  prefix_sets = {k: evaluator.FeatureSet() for k in prefixes if measure is not None}
  histogram = np.zeros(config.model.codebook_size, np.int64)
  seen = 0
  bar = console.progress_bar(math.ceil(n_total / e.batch_size), "eval", enabled=progress)
  t0 = time.time()
  with jax.set_mesh(mesh):
    for batch in it:
      inputs = parallel.global_batch({"image": batch["image"], "mask": batch["mask"]}, mesh,
                                     tok.rules)
      recon, codes, prefix_recons = reconstruct(params, inputs["image"])
      if not recon.is_fully_addressable:
        # Multi-process: every process scores the whole batch. Inputs are gathered from the same
        # global arrays as the outputs, so rows stay paired whatever the device order.
        recon, codes, originals, mask = multihost_utils.process_allgather(
            (recon, codes, inputs["image"], inputs["mask"]), tiled=True)
      else:
        originals, mask = batch["image"], batch["mask"]
      mask = np.asarray(mask, bool)
      recon, codes = np.asarray(jax.device_get(recon)), np.asarray(jax.device_get(codes))
      originals = np.asarray(originals)
      if measure is not None:   # whole (padded) batches: one compiled shape; padding dropped after
        recon_set.add(measure(image_lib.to_uint8(recon)), mask)
        if reference is None:
          original_set.add(measure(image_lib.to_uint8(originals)), mask)
      if lpips is not None:
        sums["lpips"] = sums.get("lpips", 0.0) + float(lpips(originals, recon)[mask].sum())
      if prefixes and not grid_rows:
        grid_rows[0] = originals[mask][:GRID_IMAGES]
        grid_rows[full_count] = recon[mask][:GRID_IMAGES]
      for k, part in zip(prefixes, prefix_recons):
        part = _gathered(part)
        if k not in grid_rows:
          grid_rows[k] = part[mask][:GRID_IMAGES]
        if k in prefix_sets:
          prefix_sets[k].add(measure(image_lib.to_uint8(part)), mask)
        prefix_sums[k]["psnr"] += float(image_metrics.psnr(originals[mask], part[mask]).sum())
        prefix_sums[k]["ssim"] += float(image_metrics.ssim(originals[mask], part[mask]).sum())
      recon, codes, originals = recon[mask], codes[mask], originals[mask]
      sums["psnr"] += float(image_metrics.psnr(originals, recon).sum())
      sums["ssim"] += float(image_metrics.ssim(originals, recon).sum())
      histogram += np.bincount(codes.ravel(), minlength=histogram.size)
      seen += int(mask.sum())
      bar.update(1)
  bar.close()
  rfid = {}
  if measure is not None:
    if reference is not None:
      reference_pool = None
      if e.precision_recall:
        reference_pool = evaluator.measure_batches(
            measure, fid.iter_reference_images(e.fid_reference, e.batch_size), keep_pool=True).pool
      scores = evaluator.compare(recon_set, reference, protocol, reference_pool=reference_pool)
      named = {"path": e.fid_reference, "sha256": reference["sha256"]}
    else:
      scores = evaluator.compare(recon_set, original_set.statistics(), protocol,
                                 reference_pool=original_set.pool)
      named = "the evaluated originals"
    scores.pop("num_samples")
    rfid = {"rfid": scores.pop("fid"), **scores, "rfid_reference": named,
            "inception": (evaluator.inception_record(e.inception_path)
                          if fileio.isfile(e.inception_path) else e.inception_path)}
  per_prefix = []
  for k in prefixes:
    row = {"num_tokens": k, **{m: v / max(seen, 1) for m, v in prefix_sums[k].items()}}
    if k in prefix_sets:
      target = reference if reference is not None else original_set.statistics()
      row["rfid"] = float(evaluator.compare(prefix_sets[k], target, protocol)["fid"])
    per_prefix.append(row)
  result = {
      "step": step, "workdir": workdir, "num_images": seen, "image_size": config.data.image_size,
      "eval_split": {"source": config.data.source, **(
          {"path": config.data.eval_path or config.data.train_path}
          if config.data.source == "array_record" else
          {"tfds": f"{config.data.tfds_name}:{config.data.tfds_eval_split}"}
          if config.data.source == "tfds" else {})},
      "psnr": sums["psnr"] / max(seen, 1), "ssim": sums["ssim"] / max(seen, 1),
      **({"lpips": sums["lpips"] / max(seen, 1)} if lpips is not None else {}),
      **code_statistics(histogram), **rfid,
      "tokens_per_image": int(histogram.sum() // max(seen, 1)),
      "weights": "ema" if config.optim.ema_decay > 0 else "generator",
      "seconds": round(time.time() - t0, 2),
  }
  if per_prefix:
    full = {"num_tokens": result["tokens_per_image"], "psnr": result["psnr"],
            "ssim": result["ssim"], **({"rfid": result["rfid"]} if rfid else {})}
    result["per_prefix"] = per_prefix + [full]
  if jax.process_index() == 0:
    if per_prefix:
      result["plot"] = _save_prefix_plot(workdir, step, result["per_prefix"], seen)
      rows = [image_lib.to_uint8(grid_rows[k]) for k in sorted(grid_rows)]
      result["prefix_grid"] = image_lib.save_png(
          image_lib.image_grid(np.concatenate(rows), per_row=len(rows[0])),
          runs.eval_path(workdir, f"tokens_{step:08d}_grid", "png"))
    out = result["json"] = runs.save_eval(workdir, f"tokenizer_{step:08d}", result)
    console.info(f"eval at step {step} on {seen} images: "
                 + (evaluator.summary_line({**result, "fid": result["rfid"]}, "rFID") + ", "
                    if rfid else "") + f"PSNR {result['psnr']:.2f} dB, SSIM "
                   f"{result['ssim']:.4f}, codebook usage {result['codebook_usage']:.4f}, "
                   f"perplexity {result['code_perplexity']:.1f}; {out}")
    if per_prefix:
      console.info("PSNR by tokens decoded: " + ", ".join(
          f"{r['num_tokens']}: {r['psnr']:.2f}" for r in result["per_prefix"])
                   + f" dB; plot {result['plot']}, grid {result['prefix_grid']}")
  return result
