"""`--mode=extract_codes` (GPT recipes): a trained tokenizer turns a dataset into token sequences.

Reads the images of `extract.split` from the tokenizer's data group (its saved config) (paths overridable with
`extract.image_train_path` / `image_eval_path`), encodes each image in 1, 2 or 10 views
(`extract.augment` = none | flip | ten_crop) and writes `data/codes.py` shards plus metadata.json.

Sharded over hosts and resumable: the images are cut into chunks of `extract.images_per_shard`;
process p encodes chunks p, p + P, ... on its own devices and writes one shard per chunk, atomically.
A rerun skips the shards that exist, so an interrupted extraction continues where it stopped.
The output may be on gs:// (`fileio`; each shard is written locally and uploaded whole on close).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from gigatok_jax import build, console, fileio, inference, parallel, runs
from gigatok_jax.config import gpt as gpt_schema
from gigatok_jax.data import codes as codes_lib
from gigatok_jax.data import pipeline, records, transforms
from gigatok_jax.errors import ConfigError, DataError

AUGMENTS = gpt_schema.EXTRACT_VIEWS


def image_views(image: np.ndarray, size: int, augment: str, ten_crop_scale: float) -> np.ndarray:
  """One uint8 image -> (V, size, size, 3) views: centre crop [+ its flip], or ten crops
  (4 corners + centre of the centre square of side size * scale, then the same five flipped)."""
  if augment in ("none", "flip"):
    center = transforms.center_crop(image, size)
    return np.stack([center, center[:, ::-1]] if augment == "flip" else [center])
  # As LlamaGen: centre-crop a square of size * scale first, then the ten crops of it.
  big = transforms.center_crop(image, max(size, round(size * ten_crop_scale)))
  h, w = big.shape[:2]
  boxes = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
           ((h - size) // 2, (w - size) // 2)]
  crops = [big[t:t + size, l:l + size] for t, l in boxes]
  return np.stack(crops + [c[:, ::-1] for c in crops])


def run(config, workdir: str, *, progress: bool = True, options=None) -> dict:
  del options
  e = config.extract                     # checked by config/validate.py (check_extract)
  tok = runs.gpt_tokenizer_config(config)
  runs.check_tokenizer_fits(config, tok)
  source = pipeline.make_source(tok.data, e.split)
  num_images = len(source) if e.max_images <= 0 else min(e.max_images, len(source))
  out_dir = e.output or runs.codes_dir(workdir, e.split)
  fileio.makedirs(out_dir)

  # Each process encodes its chunks on its own devices: no cross-host traffic, independent progress.
  # A plain data-parallel mesh over them (the recipe's mesh is sized for the whole job); the
  # tokenizer's axis rules place its weights on it.
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
                            jax.local_devices())
  parallel.check_batch_divisible(e.batch_size, mesh, build.axis_rules(tok), "extract.batch_size",
                                 " of this process")
  loaded = inference.load(tok, config.tokenizer.workdir, mesh)
  params, tok_step = loaded.params, loaded.step
  # (B, N) codes, cut to the GPT's model.num_tokens (a prefix for nested-dropout tokenizers;
  # runs.check_tokenizer_fits allows nothing else).
  encode = jax.jit(lambda p, x: loaded.model(p).encode(x)[:, :config.model.num_tokens],
                   in_shardings=(loaded.spec.shardings, loaded.batch_sharding(4)))

  num_shards = math.ceil(num_images / e.images_per_shard)
  mine = [k for k in range(jax.process_index(), num_shards, jax.process_count())]
  done = set(codes_lib.shard_files(out_dir)) if fileio.isdir(out_dir) else set()
  todo = [k for k in mine if fileio.basename(codes_lib.shard_path(out_dir, k, num_shards))
          not in done]
  size, views = tok.data.image_size, AUGMENTS[e.augment]
  meta = {"format": "gigatok_jax.codes.v1", "num_images": num_images, "num_shards": num_shards,
          "num_tokens": config.model.num_tokens, "vocab_size": tok.model.codebook_size,
          "num_classes": config.model.num_classes, "variants": views, "augment": e.augment,
          "ten_crop_scale": e.ten_crop_scale, "images_per_shard": e.images_per_shard,
          "split": e.split, "tokenizer_workdir": config.tokenizer.workdir, "tokenizer_step": tok_step}
  meta_path = fileio.join(out_dir, records.METADATA_FILE)
  if fileio.isfile(meta_path):
    # A rerun continues an extraction only if it is the same one; never mix codes of two runs.
    old = fileio.read_json(meta_path)
    changed = sorted(k for k in meta if old.get(k) != meta[k])
    if changed and codes_lib.shard_files(out_dir):
      raise ConfigError("extract.output", f"{out_dir} holds an extraction with other settings "
                        f"({', '.join(f'{k}: {old.get(k)!r} -> {meta[k]!r}' for k in changed)}); "
                        "remove it or choose another extract.output")
  if jax.process_index() == 0:
    fileio.atomic_write_json(meta_path, meta)
  console.info(f"extract_codes: {num_images} {e.split} images x {views} views -> {out_dir} "
                 f"({len(mine) - len(todo)} of this process's {len(mine)} shards already done)")

  bar = console.progress_bar(
      sum(min(e.images_per_shard, num_images - k * e.images_per_shard) for k in todo),
      "extract_codes", enabled=progress, unit="img")
  per_call = max(1, e.batch_size // views)            # images per encode call (V views each)
  for k in todo:
    start, stop = k * e.images_per_shard, min((k + 1) * e.images_per_shard, num_images)
    with records.ShardWriter(codes_lib.shard_path(out_dir, k, num_shards)) as writer:
      for i in range(start, stop, per_call):
        items = [source[j] for j in range(i, min(i + per_call, stop))]
        batch = np.concatenate([image_views(it["image"], size, e.augment, e.ten_crop_scale)
                                for it in items])
        padded = np.zeros((e.batch_size,) + batch.shape[1:], np.float32)
        padded[:len(batch)] = transforms.to_float(batch)
        with jax.set_mesh(mesh):
          ids = np.asarray(jax.device_get(encode(params, padded)))[:len(batch)]
        for j, it in enumerate(items):
          if not 0 <= it["label"] < config.model.num_classes:
            raise DataError(f"{e.split} image {i + j} has label {it['label']}, outside the GPT's "
                            f"model.num_classes={config.model.num_classes} classes")
          writer.write_raw(codes_lib.encode_code_record(ids[j * views:(j + 1) * views], it["label"]))
        bar.update(len(items))
  bar.close()
  console.info(f"extract_codes: done ({len(todo)} shards written by this process)")
  return {"output": out_dir, **meta, "shards_written": len(todo)}
