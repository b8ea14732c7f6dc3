"""Our ArrayRecord image format: writer, reader and image decoding.

Record format (version 1). Each ArrayRecord record is one msgpack map (no pickle):

  {"v": 1, "image": <bin: encoded image file>, "label": <int>, "name": <str>}

- "image": the bytes of a PNG or JPEG file: the source file's bytes unchanged when it already is PNG or
  JPEG, otherwise a lossless PNG re-encoding of its RGB conversion.
- "label": the integer class id (0 for unlabelled data).
- "name": where the image came from (path relative to the prepared folder); informational only.
Unknown keys are ignored by the reader, so later versions can add fields.

A prepared dataset is a directory of shard files `data-XXXXX-of-NNNNN.array_record` plus a
`metadata.json` (see `prepare.py`). Shards are written with `group_size:1` for fast random access.
"""

from __future__ import annotations

import glob
import io
import json
import os
from typing import Iterable, Sequence

import msgpack
import numpy as np
from PIL import Image

from gigatok_jax.errors import DataError

RECORD_VERSION = 1
SHARD_SUFFIX = '.array_record'
METADATA_FILE = 'metadata.json'
_WRITER_OPTIONS = 'group_size:1'


def encode_record(image_bytes: bytes, label: int, name: str = '') -> bytes:
  """Serializes one record (see the module docstring for the format)."""
  return msgpack.packb({'v': RECORD_VERSION, 'image': bytes(image_bytes), 'label': int(label),
                        'name': str(name)}, use_bin_type=True)


def decode_record(raw: bytes) -> dict:
  """Parses one record into {'image': bytes, 'label': int, 'name': str}; ValueError if malformed."""
  try:
    record = msgpack.unpackb(raw, raw=False)
  except Exception as e:  # msgpack raises several unrelated exception types.
    raise ValueError(f'not a msgpack record ({type(e).__name__}: {e})') from None
  if not isinstance(record, dict) or 'image' not in record or 'label' not in record:
    raise ValueError('record is not a map with "image" and "label" keys')
  if not isinstance(record['image'], bytes) or not isinstance(record['label'], int):
    raise ValueError('record "image" must be bytes and "label" an int')
  return {'image': record['image'], 'label': record['label'], 'name': record.get('name', '')}


def pil_to_rgb(pil: Image.Image) -> Image.Image:
  """Converts any PIL mode to RGB; transparent pixels are composited onto white."""
  if pil.mode == 'RGB':
    return pil
  if pil.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
    # 16/32-bit grey: rescale to 8 bits instead of letting PIL clip at 255.
    array = np.asarray(pil, dtype=np.float64)
    peak = array.max() if array.size else 0.0
    if peak > 255:
      array = array * (255.0 / (65535.0 if peak <= 65535 else peak))
    pil = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode='L')
    return pil.convert('RGB')
  has_alpha = pil.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (
      pil.mode == 'P' and 'transparency' in pil.info)
  if has_alpha:
    rgba = pil.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert('RGB')
  return pil.convert('RGB')


def decode_image(data: bytes) -> np.ndarray:
  """Decodes encoded image bytes to uint8 HxWx3 RGB. Raises OSError/ValueError on bad data."""
  with Image.open(io.BytesIO(data)) as pil:
    pil.load()
    return np.asarray(pil_to_rgb(pil))


def encode_png(image: np.ndarray) -> bytes:
  """Encodes a uint8 HxWx3 (or HxW) array as PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image)).save(buf, format='PNG')
  return buf.getvalue()


def shard_name(index: int, num_shards: int, prefix: str = 'data') -> str:
  return f'{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}'


class ShardWriter:
  """Writes one shard atomically: records go to `<path>.tmp`, renamed to `path` on `close()`.

  A crash leaves only a `.tmp` file, which readers never match, never a truncated shard.
  """

  def __init__(self, path: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    self.path = path
    self._tmp_path = path + '.tmp'
    self._writer = array_record_module.ArrayRecordWriter(self._tmp_path, _WRITER_OPTIONS)
    self.num_records = 0

  def write(self, image_bytes: bytes, label: int, name: str = '') -> None:
    self.write_raw(encode_record(image_bytes, label, name))

  def write_raw(self, record: bytes) -> None:
    """Writes one already-serialized record (other record formats, e.g. data/codes.py)."""
    self._writer.write(record)
    self.num_records += 1

  def close(self) -> None:
    if self._writer is None:
      return
    self._writer.close()
    self._writer = None
    os.replace(self._tmp_path, self.path)

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if os.path.exists(self._tmp_path):
      os.remove(self._tmp_path)

  def __enter__(self) -> 'ShardWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_shards(records: Iterable[tuple[bytes, int, str]], output_dir: str,
                 num_shards: int) -> list[str]:
  """Writes (image_bytes, label, name) records round-robin into `num_shards` shards.

  A convenience for small in-memory datasets and tests; `prepare.py` streams large folders itself.
  """
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, shard_name(k, num_shards)) for k in range(num_shards)]
  writers = [ShardWriter(p) for p in paths]
  try:
    for i, (image_bytes, label, name) in enumerate(records):
      writers[i % num_shards].write(image_bytes, label, name)
  except BaseException:
    for w in writers:
      w.abort()
    raise
  for w in writers:
    w.close()
  return paths


def find_shard_files(path: str) -> list[str]:
  """Shard files for `path`: a directory (all `*.array_record` in it) or a glob / single file.

  Returns a sorted list, empty when nothing matches.
  """
  if not path:
    return []
  if os.path.isdir(path):
    pattern = os.path.join(path, '*' + SHARD_SUFFIX)
  else:
    pattern = path
  return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def shard_pattern(path: str) -> str:
  """The glob that `find_shard_files(path)` uses, for error messages."""
  return os.path.join(path, '*' + SHARD_SUFFIX) if os.path.isdir(path) else path


def read_metadata(path: str) -> dict | None:
  """The `metadata.json` of a prepared directory, or None when absent."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  meta_path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(meta_path):
    return None
  with open(meta_path, encoding='utf-8') as f:
    return json.load(f)


class ImageRecordSource:
  """Random-access source over our shards: record i -> {'image': uint8 HxWx3, 'label': int}.

  Wraps `grain.sources.ArrayRecordDataSource` (which pickles, so this works in grain workers).
  A record that cannot be decoded raises `DataError` naming the record.
  """

  def __init__(self, paths: Sequence[str]):
    import grain  # pylint: disable=import-outside-toplevel
    self.paths = list(paths)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict:
    return self._decode(int(index), self._source[int(index)])

  def _decode(self, index: int, raw: bytes) -> dict:
    try:
      record = decode_record(raw)
      image = decode_image(record['image'])
    except (OSError, ValueError, SyntaxError) as e:
      raise DataError(f'ArrayRecord record {index} of {self._describe()} is unreadable: '
                      f'{type(e).__name__}: {e}') from None
    return {'image': image, 'label': record['label']}

  def read_raw(self, index: int) -> dict:
    """The undecoded record: {'image': bytes, 'label': int, 'name': str}."""
    return decode_record(self._source[int(index)])

  def _describe(self) -> str:
    if len(self.paths) == 1:
      return self.paths[0]
    return f'{len(self.paths)} shards in {os.path.dirname(self.paths[0]) or "."}'

  def __repr__(self) -> str:
    return f'ImageRecordSource({self._describe()}, num_records={len(self)})'
