"""`--mode=eval` for tokenizer recipes: reconstruction metrics over the eval split.

Streams `eval.num_images` images of the eval split (0 = all) through the latest checkpoint in
batches of `eval.batch_size` sharded over the devices, and reports PSNR and SSIM (skimage
conventions, uint8 scale; `image_metrics.py`), codebook usage (distinct codes used / codebook size)
and code perplexity (exp of the entropy of the code histogram) over all those images. Nothing but
running sums and the code histogram is kept, so 50k images need no more memory than one batch.
Writes <workdir>/eval/tokenizer_<step>.json with every setting that produced the numbers.

rFID joins these metrics once the FID Inception port lands (the statistics are in `fid.py`).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from gigatok_jax import parallel, trained
from gigatok_jax.data import pipeline
from gigatok_jax.errors import ConfigError
from gigatok_jax.evaluate import image_metrics
from gigatok_jax.train import reporting


def code_statistics(histogram: np.ndarray) -> dict[str, float]:
  """Usage (fraction of codes used at least once) and perplexity of a code histogram."""
  total = histogram.sum()
  p = histogram[histogram > 0] / max(total, 1)
  return {"codebook_usage": float((histogram > 0).mean()),
          "codes_used": int((histogram > 0).sum()),
          "code_perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0}


def run(config, workdir: str, *, progress: bool = True, devices=None) -> dict:
  e = config.eval
  mesh = parallel.make_mesh(config.mesh, devices)
  dp = parallel.data_parallel_size(mesh, tuple(tuple(r) for r in config.mesh.axis_rules))
  if e.batch_size <= 0 or e.batch_size % dp:
    raise ConfigError("eval.batch_size", f"{e.batch_size} must be a positive multiple of the {dp} "
                      "data-parallel devices")
  task, params, step = trained.load_tokenizer(config, workdir, mesh)
  reconstruct = task.jitted_reconstruct()
  num = None if e.num_images <= 0 else e.num_images
  it = pipeline.make_eval_iterator(config.data, batch_size=e.batch_size, num_images=num,
                                   batch_size_key="eval.batch_size")
  available = len(pipeline.make_source(config.data, "eval"))
  n_total = available if num is None else min(num, available)
  sums = {"psnr": 0.0, "ssim": 0.0}
  histogram = np.zeros(config.model.codebook_size, np.int64)
  seen = 0
  from tqdm import tqdm
  bar = tqdm(total=math.ceil(n_total / e.batch_size), unit="batch", desc="eval",
             disable=not progress or jax.process_index() != 0)
  t0 = time.time()
  with jax.set_mesh(mesh):
    for batch in it:
      inputs = parallel.global_batch({"image": batch["image"], "mask": batch["mask"]}, mesh,
                                     task.rules)
      recon, codes = reconstruct(params, inputs["image"])
      if not recon.is_fully_addressable:
        # Multi-process: every process scores the whole batch. Inputs are gathered from the same
        # global arrays as the outputs, so rows stay paired whatever the device order.
        recon, codes, originals, mask = multihost_utils.process_allgather(
            (recon, codes, inputs["image"], inputs["mask"]), tiled=True)
      else:
        originals, mask = batch["image"], batch["mask"]
      mask = np.asarray(mask, bool)
      recon, codes = np.asarray(jax.device_get(recon))[mask], np.asarray(jax.device_get(codes))[mask]
      originals = np.asarray(originals)[mask]
      sums["psnr"] += float(image_metrics.psnr(originals, recon).sum())
      sums["ssim"] += float(image_metrics.ssim(originals, recon).sum())
      histogram += np.bincount(codes.ravel(), minlength=histogram.size)
      seen += int(mask.sum())
      bar.update(1)
  bar.close()
  result = {
      "step": step, "workdir": workdir, "num_images": seen, "image_size": config.data.image_size,
      "eval_split": {"source": config.data.source, **(
          {"path": config.data.eval_path or config.data.train_path}
          if config.data.source == "array_record" else
          {"tfds": f"{config.data.tfds_name}:{config.data.tfds_eval_split}"}
          if config.data.source == "tfds" else {})},
      "psnr": sums["psnr"] / max(seen, 1), "ssim": sums["ssim"] / max(seen, 1),
      **code_statistics(histogram),
      "tokens_per_image": int(histogram.sum() // max(seen, 1)),
      "weights": "ema" if config.optim.ema_decay > 0 else "generator",
      "seconds": round(time.time() - t0, 2),
  }
  if jax.process_index() == 0:
    out = os.path.join(workdir, "eval", f"tokenizer_{step:08d}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
    result["json"] = out
    reporting.info(f"eval at step {step} on {seen} images: PSNR {result['psnr']:.2f} dB, SSIM "
                   f"{result['ssim']:.4f}, codebook usage {result['codebook_usage']:.4f}, "
                   f"perplexity {result['code_perplexity']:.1f}; {out}")
  return result
