"""`--mode=reconstruct`: encode + decode images with the latest checkpoint in the workdir.

Images come from `data.reconstruct_input` (a folder, center-cropped to the image size) or, when it
is empty, the first `eval_num_images` images of the eval split. Writes
`<workdir>/reconstruct/grid_<step>.png` (originals above reconstructions) and
`<workdir>/reconstruct/metrics_<step>.json`, and prints PSNR and codebook usage. With
`eval.num_tokens=k` (a tokenizer trained with nested dropout) the images decode from their first k
tokens, and the file names end in `_<k>tokens`.
"""

from __future__ import annotations

import jax
import numpy as np

from gigatok_jax import fileio, images as image_lib, inference, parallel, runs
from gigatok_jax.metrics import image as image_metrics


def load_images(config) -> np.ndarray:
  from gigatok_jax.data import pipeline
  if config.data.reconstruct_input:
    src = pipeline.image_folder_source(config.data.reconstruct_input, config.data.image_size,
                                       key="data.reconstruct_input")
    return np.stack([src[i]["image"] for i in range(min(len(src), config.eval_num_images))])
  it = pipeline.make_eval_iterator(config.data, batch_size=config.eval_num_images,
                                   num_images=config.eval_num_images)
  batch = next(iter(it))
  images = batch["image"]
  if "mask" in batch:
    images = images[np.asarray(batch["mask"], bool)]
  return images


def run(config, workdir: str, *, progress: bool = True, options=None, devices=None,
        batch_size: int = 16) -> dict:
  del progress, options
  mesh = parallel.make_mesh(config.mesh, devices)
  tok = inference.load(config, workdir, mesh)
  params, step = tok.params, tok.step
  images = load_images(config)
  k = config.eval.get("num_tokens", 0) or None      # nested dropout: decode from a prefix
  reconstruct = inference.reconstruct_fn(tok.spec, k)
  recons, codes = [], []
  with jax.set_mesh(mesh):
    for i in range(0, len(images), batch_size):
      r, c = reconstruct(params, images[i:i + batch_size])
      recons.append(np.asarray(jax.device_get(r)))
      codes.append(np.asarray(jax.device_get(c)))
  recon = np.concatenate(recons)
  codes = np.concatenate(codes)
  used = np.unique(codes)
  result = {
      "step": int(step),
      "num_images": int(len(images)),
      "psnr": float(np.mean(image_metrics.psnr(images, recon))),
      "codes_used": int(used.size),
      "codebook_usage": float(used.size / config.model.codebook_size),
      "tokens_per_image": int(codes.shape[1]),
      "tokens_decoded": int(k or codes.shape[1]),
  }
  out_dir = runs.reconstruct_dir(workdir)
  if jax.process_index() == 0:
    name = f"{step:08d}" + (f"_{k}tokens" if k else "")
    result["grid"] = image_lib.save_png(image_lib.comparison_grid(images, recon),
                                        fileio.join(out_dir, f"grid_{name}.png"))
    fileio.atomic_write_json(fileio.join(out_dir, f"metrics_{name}.json"), result)
    print(f"reconstructed {result['num_images']} images at step {step} from "
          f"{result['tokens_decoded']} of {result['tokens_per_image']} tokens: PSNR "
          f"{result['psnr']:.2f} dB, {result['codes_used']} codes used "
          f"({100 * result['codebook_usage']:.2f}% of the codebook); grid: {result['grid']}")
  return result
