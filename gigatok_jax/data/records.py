"""Our ArrayRecord image format: writer, reader and image decoding.

Record format (version 1). Each ArrayRecord record is one msgpack map (no pickle):

  {"v": 1, "image": <bin: encoded image file>, "label": <int>, "name": <str>}

- "image": the bytes of a PNG or JPEG file: the source file's bytes unchanged when it already is PNG or
  JPEG, otherwise a lossless PNG re-encoding of its RGB conversion.
- "label": the integer class id (0 for unlabelled data).
- "name": where the image came from (path relative to the prepared folder); informational only.
Unknown keys are ignored by the reader, so later versions can add fields.

A prepared dataset is a directory of shard files `data-XXXXX-of-NNNNN.array_record` plus a
`metadata.json` (see `prepare.py`) that lists every shard with its record count. Shards are written
with `group_size:1` for fast random access.

Complete or refused: `check_shards` compares the shards found with that list before a dataset is
used (training, eval, the config check), so a deleted, extra, truncated or damaged shard stops the
run with one line naming the file, instead of training on part of the data.

Object stores: shards may be read from gs:// directly (array_record reads gs:// objects itself,
through google-cloud-cpp with Application Default Credentials: one ranged request per record read,
so a local disk or a gcsfuse mount is faster for large datasets). array_record cannot write there:
`ShardWriter` writes a local temporary file and uploads it as one object when the shard is closed.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from typing import Iterable, NamedTuple, Sequence

import msgpack
import numpy as np
from PIL import Image

from gigatok_jax import fileio
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
  """Writes one shard atomically: records go to a temporary file, which becomes `path` on `close()`.

  A crash leaves only a `.tmp` file, which readers never match, never a truncated shard. Local
  shards are written as `<path>.tmp` and renamed; shards on an object store are written to a local
  temporary file and uploaded as one object on `close()` (array_record writes local files only).
  """

  def __init__(self, path: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    self.path = path
    self._remote = fileio.is_remote(path)
    if self._remote:
      import tempfile  # pylint: disable=import-outside-toplevel
      fd, self._tmp_path = tempfile.mkstemp(prefix='gigatok_shard-', suffix=SHARD_SUFFIX + '.tmp')
      os.close(fd)
    else:
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
    if self._remote:
      try:
        fileio.upload(self._tmp_path, self.path)
      finally:
        os.remove(self._tmp_path)
    else:
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
  fileio.makedirs(output_dir)
  paths = [fileio.join(output_dir, shard_name(k, num_shards)) for k in range(num_shards)]
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
  found = fileio.glob(shard_pattern(path))
  if fileio.is_remote(path):
    return [p for p in found if p.endswith(SHARD_SUFFIX) or fileio.isfile(p)]
  return [p for p in found if os.path.isfile(p)]


def shard_pattern(path: str) -> str:
  """The glob that `find_shard_files(path)` uses, for error messages."""
  return fileio.join(path, '*' + SHARD_SUFFIX) if fileio.isdir(path) else path


def read_metadata(path: str) -> dict | None:
  """The `metadata.json` of a prepared directory, or None when absent."""
  directory = path if fileio.isdir(path) else fileio.dirname(path)
  meta_path = fileio.join(directory, METADATA_FILE)
  if not fileio.isfile(meta_path):
    return None
  return fileio.read_json(meta_path)


# ------------------------------------------------------------------------------ complete or refused
class Shard(NamedTuple):
  path: str
  num_records: int


def count_records(path: str) -> int:
  """Records in one ArrayRecord file (read from its footer); DataError naming the file when it does
  not open: truncated, damaged, or not an ArrayRecord file."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  try:
    reader = array_record_module.ArrayRecordReader(path)
  except Exception as e:  # pylint: disable=broad-except  - pybind raises RuntimeError and friends
    raise DataError(f'{path}: cannot open it as an ArrayRecord file ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else "no detail"})') from None
  if not reader.ok():
    try:
      reader.close()      # the reader's status, e.g. "Failed to read RiegeliPostscript"
      reason = 'no detail'
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f'{path}: not a complete ArrayRecord file, truncated or damaged ({reason})')
  try:
    return int(reader.num_records())
  finally:
    reader.close()


def count_all(paths: Sequence[str]) -> list[int]:
  """`count_records` of every file, in parallel (each is a footer read: a few requests on gs://)."""
  if len(paths) <= 1:
    return [count_records(p) for p in paths]
  threads = 64 if fileio.is_remote(paths[0]) else 16     # network latency vs local disk seeks
  with concurrent.futures.ThreadPoolExecutor(min(threads, len(paths))) as pool:
    return list(pool.map(count_records, paths))


def check_shards(path: str, paths: Sequence[str], meta: dict | None) -> list[Shard]:
  """The shards of `path` (a prepared directory, or a glob / file inside one) with their record
  counts, checked against `metadata.json`: a DataError naming the shard file for a listed shard
  that is missing (directories only: a glob may select a subset on purpose), a shard file the
  metadata does not list, or a shard that does not open or holds another number of records.
  Without metadata (shards written by other tools) each file must still open.
  """
  listed = {s['file']: int(s['num_records']) for s in (meta or {}).get('shards', [])}
  if listed:
    directory = path if fileio.isdir(path) else fileio.dirname(path)
    found = {fileio.basename(p) for p in paths}
    for p in paths:
      if fileio.basename(p) not in listed:
        raise DataError(f'{p}: unexpected shard: {METADATA_FILE} in {directory} lists '
                        f'{len(listed)} shard(s) and not this one (remove it, or prepare the '
                        'dataset again)')
    missing = sorted(set(listed) - found)
    if missing and directory == path:
      raise DataError(f'{fileio.join(directory, missing[0])}: missing: {METADATA_FILE} lists '
                      f'{len(listed)} shard(s) and {len(missing)} of them are gone (restore them, '
                      'or prepare the dataset again)')
  counts = count_all(paths)
  for p, n in zip(paths, counts):
    want = listed.get(fileio.basename(p))
    if want is not None and n != want:
      raise DataError(f'{p}: holds {n} records but {METADATA_FILE} lists {want}: the shard is '
                      'truncated or was replaced (prepare the dataset again)')
  return [Shard(p, n) for p, n in zip(paths, counts)]


class ImageRecordSource:
  """Random-access source over our shards: record i -> {'image': uint8 HxWx3, 'label': int}.

  Wraps `grain.sources.ArrayRecordDataSource` (which pickles, so this works in grain workers).
  `shards`: paths, or `Shard`s whose record counts were already read (`check_shards`), which
  spares grain opening every file again. A record that cannot be decoded raises `DataError` naming
  the record.
  """

  def __init__(self, shards: Sequence[str | Shard]):
    self.paths = [s.path if isinstance(s, Shard) else s for s in shards]
    self._source = array_record_source(shards)

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
    return f'{len(self.paths)} shards in {fileio.dirname(self.paths[0]) or "."}'

  def __repr__(self) -> str:
    return f'ImageRecordSource({self._describe()}, num_records={len(self)})'


def array_record_source(shards: Sequence[str | Shard]):
  """grain's ArrayRecordDataSource over paths, or over counted `Shard`s: given as `path[0:n]`
  (array_record's slice syntax), so that it does not open every file again to count records."""
  import grain  # pylint: disable=import-outside-toplevel
  return grain.sources.ArrayRecordDataSource(
      [f'{s.path}[0:{s.num_records}]' if isinstance(s, Shard) else s for s in shards])
