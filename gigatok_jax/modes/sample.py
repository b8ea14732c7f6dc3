"""`--mode=sample` (GPT recipes): class-conditional samples decoded to images by the tokenizer.

Writes into `sample.output` (default <workdir>/samples):
  samples_<tag>.npz    'arr_0': uint8 (N, H, W, 3) images (the layout FID evaluators read) and
                       'labels': int32 (N,)
  grid_<tag>.png       the first `sample.grid_images` samples, one row per class
  samples_<tag>.json   every setting that produced them (checkpoints, sampling, seed, timing)
with <tag> = <GPT step>_cfg<scale>-<schedule>_T<temperature>_k<top_k>_p<top_p>_seed<seed>_n<N>.
Sample i has class `sample.classes[i % len]` (or i % num_classes; with several processes the order
within a batch follows the devices, and 'labels' says each image's class) and its batch's key is
fold_in(key(sample.seed), batch index): a rerun with the same settings gives the same images.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gigatok_jax import console, distributed, fileio, images as image_lib, inference, parallel, runs
from gigatok_jax.errors import ConfigError
from gigatok_jax.models.sampler import SamplingSettings, generate


def sample_labels(sample_cfg, num_classes: int) -> np.ndarray:
  """The class of every sample (ids checked by config/validate.py: check_sample)."""
  n = sample_cfg.num_samples
  classes = np.asarray(sample_cfg.classes or range(num_classes), np.int32)
  return classes[np.arange(n) % len(classes)]


def class_rows_grid(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Grid with one row per class (images grouped by label, in sample order)."""
  order = np.argsort(labels, kind="stable")
  per_row = max(np.bincount(labels).max(), 1)
  rows = []
  for c in np.unique(labels):
    row = images[order][labels[order] == c]
    pad = np.full((per_row - len(row),) + images.shape[1:], 255, np.uint8)
    rows.append(np.concatenate([row, pad]))
  return image_lib.image_grid(np.concatenate(rows), per_row=per_row)


# Model keys that change how training runs, not the stored weights or what decoding computes
# (scan_layers is not one: it stores the blocks stacked).
TRAINING_ONLY = ("attention", "remat")


def check_trained_model(config, workdir: str) -> None:
  """The model group must be the one the GPT in `workdir` was trained with (its config.json)."""
  if not runs.has_config(workdir):
    return
  saved = runs.read_config(workdir, key="--workdir").model
  for key in config.model.keys():
    if key in TRAINING_ONLY:
      continue
    if key in saved and saved[key] != config.model[key]:
      raise ConfigError(f"model.{key}", f"is {config.model[key]!r} but the GPT in {workdir} was "
                        f"trained with {saved[key]!r}; pass --config.model.{key}={saved[key]}")


def run(config, workdir: str, *, progress: bool = True, options=None) -> dict:
  del options
  s = config.sample                      # checked by config/validate.py (check_sample)
  settings = SamplingSettings.from_config(s)
  labels = sample_labels(s, config.model.num_classes)
  check_trained_model(config, workdir)
  tok_cfg = runs.gpt_tokenizer_config(config)
  runs.check_tokenizer_fits(config, tok_cfg)
  mesh = parallel.make_mesh(config.mesh)
  gpt = inference.load(config, workdir, mesh)
  parallel.check_batch_divisible(s.batch_size, mesh, gpt.rules, "sample.batch_size")
  gpt_params, gpt_step = gpt.params, gpt.step
  tok = inference.load(tok_cfg, config.tokenizer.workdir, mesh)

  def fn(gpt_params, tok_params, labels, valid, key):
    codes = generate(gpt.model(gpt_params), labels, key, settings)
    images = tok.model(tok_params).decode_indices(codes)        # (B, H, W, 3)
    # labels / valid come back with the outputs so that gathered rows stay paired with them.
    return jnp.round((jnp.clip(images, -1, 1) + 1) * 127.5).astype(jnp.uint8), codes, labels, valid
  rows_sharding = gpt.batch_sharding(1)
  sample_fn = distributed.StartTogether(
      jax.jit(fn, in_shardings=(gpt.spec.shardings, tok.spec.shardings,
                                rows_sharding, rows_sharding, None)), "sampler", config)

  num_batches = math.ceil(len(labels) / s.batch_size)
  images, all_codes, out_labels = [], [], []
  t0 = time.time()
  with jax.set_mesh(mesh):
    bar = console.progress_bar(num_batches, "sample", enabled=progress)
    for b in range(num_batches):
      chunk = labels[b * s.batch_size:(b + 1) * s.batch_size]
      padded = np.resize(chunk, s.batch_size)      # the last batch repeats its labels to fill
      valid = np.arange(s.batch_size) < len(chunk)
      key = jax.random.fold_in(jax.random.key(s.seed), b)
      local = {k: np.split(v, jax.process_count())[jax.process_index()]
               for k, v in (("label", padded), ("valid", valid))}
      rows = parallel.global_batch(local, mesh, gpt.rules)
      out = sample_fn(gpt_params, tok.params, rows["label"], rows["valid"], key)
      # Multi-process: every process gathers the whole batch.
      imgs, codes, rows_labels, rows_valid = distributed.gather(out)
      images.append(imgs[rows_valid])
      all_codes.append(codes[rows_valid])
      out_labels.append(rows_labels[rows_valid])
      bar.update(1)
    bar.close()
  seconds = time.time() - t0
  images = np.concatenate(images)
  labels = np.concatenate(out_labels)
  out_dir = s.output or runs.samples_dir(workdir)
  result = {
      "gpt_workdir": workdir, "gpt_step": gpt_step, "tokenizer_recipe": config.tokenizer.recipe or "(its saved config.json)",
      "tokenizer_workdir": config.tokenizer.workdir, "tokenizer_step": tok.step,
      "num_samples": int(len(images)), "image_size": int(images.shape[1]),
      "sampling": dataclasses.asdict(settings), "seed": s.seed, "batch_size": s.batch_size,
      "classes": list(s.classes) or f"i % {config.model.num_classes}",
      "codes_used": int(np.unique(np.concatenate(all_codes)).size),
      # What the GPT and the tokenizer computed in (inference.compute_dtype: float32 on CPU).
      "compute_dtype": {"gpt": gpt.config.model.dtype, "tokenizer": tok.config.model.dtype},
      "seconds": round(seconds, 2), "images_per_sec": round(len(images) / max(seconds, 1e-9), 3),
  }
  if jax.process_index() == 0:
    fileio.makedirs(out_dir)
    # One set of files per (checkpoint, settings): a rerun with other settings keeps the earlier ones.
    tag = (f"{gpt_step:08d}_cfg{settings.cfg_scale:g}-{settings.cfg_schedule}_T{settings.temperature:g}"
           f"_k{settings.top_k}_p{settings.top_p:g}_seed{s.seed}_n{len(images)}")
    stem = fileio.join(out_dir, f"samples_{tag}")
    with fileio.atomic_write(stem + ".npz", "wb") as f:    # never a half-written .npz
      np.savez(f, arr_0=images, labels=labels)
    n_grid = min(s.grid_images, len(images))
    result["npz"] = stem + ".npz"
    result["grid"] = image_lib.save_png(class_rows_grid(images[:n_grid], labels[:n_grid]),
                                        fileio.join(out_dir, f"grid_{tag}.png"))
    fileio.atomic_write_json(stem + ".json", result)
    print(f"sampled {len(images)} images at GPT step {gpt_step} ({result['images_per_sec']} img/s): "
          f"{result['npz']}; grid: {result['grid']}")
  return result
