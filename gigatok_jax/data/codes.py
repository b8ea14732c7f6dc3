"""Token-sequence datasets: written by `--mode=extract_codes`, read by GPT training.

Record format (version 1), one msgpack map per ArrayRecord record:

  {"v": 1, "codes": <bin: little-endian uint16 or uint32, variants x length>, "dtype": "<u2" | "<u4",
   "variants": V, "length": T, "label": <int>}

V is the number of augmented views of the image (1 plain, 2 with flips, 10 for ten-crop); training
picks one view at random each time the image comes up. A codes directory holds shards
`codes-XXXXX-of-NNNNN.array_record` (one per chunk of `images_per_shard` images) and
`metadata.json` (tokenizer, step, augmentation, vocabulary, length, image and shard counts). Shards
are written atomically (`records.ShardWriter`; on gs:// uploaded whole), so a directory is complete
exactly when all N shards exist; `check_shards` also refuses extra shards and shards that do not
open or hold fewer records than their chunk has images, with one line naming the file.

Train batches: {'tokens': int32 [local_b, T], 'label': int32 [local_b]}; the iterator is a grain
`DatasetIterator` (checkpointable), seeded and split over processes like the image pipeline.
"""

from __future__ import annotations

import re

import grain
import msgpack
import numpy as np

from gigatok_jax import fileio
from gigatok_jax.data import pipeline, records
from gigatok_jax.errors import ConfigError, DataError

CODES_VERSION = 1
SHARD_PREFIX = "codes"
_SHARD_RE = re.compile(r"codes-(\d{5})-of-(\d{5})\.array_record$")


def encode_code_record(codes: np.ndarray, label: int) -> bytes:
  """codes (V, T) non-negative ints -> one serialized record."""
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.size == 0 or codes.min() < 0:
    raise ValueError(f"codes must be a non-empty (variants, length) array of non-negative ints, "
                     f"got shape {codes.shape}")
  dtype = "<u2" if codes.max() < 2**16 else "<u4"
  return msgpack.packb({"v": CODES_VERSION, "codes": codes.astype(dtype).tobytes(), "dtype": dtype,
                        "variants": int(codes.shape[0]), "length": int(codes.shape[1]),
                        "label": int(label)}, use_bin_type=True)


def decode_code_record(raw: bytes) -> dict:
  """-> {'codes': int32 (V, T), 'label': int}; ValueError if malformed."""
  try:
    r = msgpack.unpackb(raw, raw=False)
    codes = np.frombuffer(r["codes"], dtype=r["dtype"]).reshape(r["variants"], r["length"])
    return {"codes": codes.astype(np.int32), "label": int(r["label"])}
  except Exception as e:  # msgpack / numpy raise many types for bad bytes
    raise ValueError(f"not a codes record ({type(e).__name__}: {e})") from None


def shard_path(directory: str, index: int, num_shards: int) -> str:
  return fileio.join(directory, records.shard_name(index, num_shards, prefix=SHARD_PREFIX))


def read_metadata(directory: str) -> dict:
  path = fileio.join(directory, records.METADATA_FILE)
  if not fileio.isfile(path):
    raise DataError(f"{directory} has no {records.METADATA_FILE}: not a codes directory written by "
                    "--mode=extract_codes")
  return fileio.read_json(path)


def shard_files(directory: str) -> list[str]:
  """Names of the finished code shards in `directory` (sorted)."""
  return sorted(f for f in fileio.listdir(directory) if _SHARD_RE.search(f))


def check_shards(directory: str, key: str) -> list[records.Shard]:
  """The shards of a finished extraction with their record counts; a clear error otherwise: a
  ConfigError naming `key` when there is no extraction, a DataError naming the shard file when one
  is missing, unexpected, or does not open or holds another number of records than its chunk."""
  if not directory or not fileio.isdir(directory):
    raise ConfigError(key, f"{directory!r} is not a directory (run --mode=extract_codes first)")
  names = fileio.listdir(directory)
  found = sorted(f for f in names if _SHARD_RE.search(f))
  if not found:
    raise ConfigError(key, f"no codes shards in {directory} (run --mode=extract_codes first)")
  totals = {int(_SHARD_RE.search(f).group(2)) for f in found}
  if len(totals) > 1:
    raise ConfigError(key, f"{directory} mixes shards of extractions with {sorted(totals)} shards")
  total = totals.pop()
  indices = {int(_SHARD_RE.search(f).group(1)) for f in found}
  missing = sorted(set(range(total)) - indices)
  if missing:
    raise DataError(f"{shard_path(directory, missing[0], total)}: missing: {directory} holds "
                    f"{total - len(missing)} of {total} shards: the extraction is unfinished; run "
                    "--mode=extract_codes again to complete it")
  meta = read_metadata(directory)
  expected = {records.shard_name(k, meta.get("num_shards", total), prefix=SHARD_PREFIX)
              for k in range(meta.get("num_shards", total))}
  for name in sorted(n for n in names if n.endswith(records.SHARD_SUFFIX)):
    if name not in expected:
      raise DataError(f"{fileio.join(directory, name)}: unexpected shard: {records.METADATA_FILE} "
                      f"describes an extraction of {meta.get('num_shards', total)} shard(s) "
                      f"(codes-XXXXX-of-{meta.get('num_shards', total):05d}); remove it, or "
                      "extract again into an empty directory")
  paths = [fileio.join(directory, f) for f in found]
  counts = records.count_all(paths)
  per_shard, num_images = meta.get("images_per_shard"), meta.get("num_images")
  if per_shard and num_images is not None:
    for k, (path, n) in enumerate(zip(paths, counts)):
      want = min(per_shard, num_images - k * per_shard)
      if n != want:
        raise DataError(f"{path}: holds {n} records but its chunk has {want} images "
                        f"({records.METADATA_FILE}: {num_images} images, {per_shard} per shard): "
                        "the shard is truncated or was replaced; delete it and run "
                        "--mode=extract_codes again")
  return [records.Shard(p, n) for p, n in zip(paths, counts)]


def complete_shards(directory: str, key: str) -> list[str]:
  """The shard files of a finished extraction (checked: `check_shards`)."""
  return [s.path for s in check_shards(directory, key)]


class CodeRecordSource:
  """Random access over code shards: i -> {'codes': int32 (V, T), 'label': int}. `shards`: paths
  or counted `records.Shard`s (as `check_shards` returns them)."""

  def __init__(self, shards):
    self.paths = [s.path if isinstance(s, records.Shard) else s for s in shards]
    self._source = records.array_record_source(list(shards))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict:
    try:
      return decode_code_record(self._source[int(index)])
    except ValueError as e:
      raise DataError(f"codes record {int(index)} in {fileio.dirname(self.paths[0])}: {e}") from None


def _pick_view(record, rng: np.random.Generator) -> dict:
  codes = record["codes"]
  view = int(rng.integers(0, codes.shape[0])) if codes.shape[0] > 1 else 0
  return {"tokens": codes[view], "label": np.int32(record["label"])}


def _first_view(record) -> dict:
  return {"tokens": record["codes"][0], "label": np.int32(record["label"])}


def _to_batch(batch: dict) -> dict:
  return {"tokens": batch["tokens"].astype(np.int32), "label": batch["label"].astype(np.int32)}


def make_train_iterator(data_cfg, *, global_batch_size: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None):
  """Infinite, checkpointable iterator of this process's token batches (module docstring)."""
  process_index, process_count = pipeline.process_info(process_index, process_count)
  source = CodeRecordSource(check_shards(data_cfg.codes_path, "data.codes_path"))
  ds = grain.MapDataset.source(source).shuffle(seed=pipeline.derive_seed(seed, 11)).repeat()
  ds = ds.random_map(_pick_view, seed=pipeline.derive_seed(seed, 12))
  ds = ds[process_index::process_count]
  return pipeline.finish_batches(ds, data_cfg, global_batch_size // process_count, drop_remainder=True,
                          to_batch=_to_batch)


def make_eval_iterator(data_cfg, *, global_batch_size: int, process_index: int | None = None,
                       process_count: int | None = None):
  """Finite iterator over the validation codes in file order (first view), full batches only."""
  process_index, process_count = pipeline.process_info(process_index, process_count)
  source = CodeRecordSource(check_shards(data_cfg.eval_codes_path, "data.eval_codes_path"))
  # Whole global batches only, so that every process yields the same number of batches.
  usable = len(source) - len(source) % global_batch_size
  ds = grain.MapDataset.source(source)[:usable].map(_first_view)[process_index::process_count]
  return pipeline.finish_batches(ds, data_cfg, global_batch_size // process_count, drop_remainder=True,
                          to_batch=_to_batch)


def check_codes_dir(directory: str, key: str, *, vocab_size: int, num_tokens: int,
                    num_classes: int) -> dict:
  """Validates a codes directory against the GPT config before anything compiles; its metadata."""
  check_shards(directory, key)
  meta = read_metadata(directory)
  if meta.get("num_tokens") != num_tokens:
    raise ConfigError("model.num_tokens", f"is {num_tokens} but the codes in {directory} have "
                      f"{meta.get('num_tokens')} tokens per image")
  if "num_classes" in meta and meta["num_classes"] > num_classes:
    raise ConfigError("model.num_classes", f"is {num_classes} but the codes in {directory} were "
                      f"extracted for {meta['num_classes']} classes")
  if meta.get("vocab_size") != vocab_size:
    raise ConfigError("model.vocab_size", f"is {vocab_size} but the codes in {directory} come from "
                      f"a codebook of {meta.get('vocab_size')}")
  return meta


__all__ = ["CodeRecordSource", "check_codes_dir", "check_shards", "complete_shards",
           "decode_code_record", "encode_code_record", "make_eval_iterator", "shard_files",
           "make_train_iterator", "read_metadata", "shard_path"]
