"""The grain input pipeline: sources, config validation, train and eval iterators.

Sources (`data.source`), all random access and yielding {'image': uint8 HxWx3, 'label': int}:
- 'demo': crops of the photographs shipped in scikit-image / scikit-learn (`demo.py`). Its records are
  already S x S crops at a random scale and position, so the train map skips the ADM resized crop for
  it and only applies the flip; eval records pass through unchanged.
- 'digits': scikit-learn's 1797 8x8 handwritten digits upsampled to S x S, labels 0-9 (the AR demo's
  class-conditional data; `demo.DigitsSource`). No crop; set data.random_flip False for it.
- 'array_record': our shards written by `prepare.py` (`records.py`); data.train_path / data.eval_path
  is a prepared directory or a glob of shard files, local or gs:// (read by array_record itself).
  Every shard metadata.json lists must be there, whole, and nothing else (`records.check_shards`).
- 'tfds': `tfds.data_source(data.tfds_name, split=data.tfds_{train,eval}_split,
  data_dir=data.tfds_data_dir)` over a prepared tfds ArrayRecord dataset (never downloads).

Train iterator (per JAX process), a grain `DatasetIterator` with get_state()/set_state():
  source -> shuffle(seed) -> repeat() [each epoch reshuffled] -> random_map(augment, seed')
  -> [process_index::process_count] -> batch(local, drop_remainder) -> to_iter_dataset(read threads)
  -> to float -> mp_prefetch (when data.worker_count > 0).
The augmentation generator is seeded by (seed', position in the global stream), so a record's crop
depends only on the seed and its position: a restored iterator repeats batches bit for bit, and the k-th
global batch holds the same records for any process count (process p takes positions p, p + P, ...)
and any read_threads / worker_count. The saved state's layout does depend on worker_count (0 vs > 0,
grain's multiprocess state is per worker): resume with the same data.worker_count.
Batches: {'image': float32 [local_b, S, S, 3] in [-1, 1], 'label': int32 [local_b]}.

Eval iterator: finite and deterministic. The eval split is put in a fixed pseudo-random order (so a
subset of `num_images` is class balanced even when the files are sorted by class), padded up to a
multiple of the global batch, and split over processes like train. Every process yields the same number
of full batches; padded slots have a black image (-1), label 0 and mask False:
  {'image': float32 [local_b, S, S, 3], 'label': int32 [local_b], 'mask': bool [local_b]}.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from absl import logging
import grain
import ml_collections
import numpy as np

from gigatok_jax.data import demo
from gigatok_jax.data import records
from gigatok_jax.data import transforms
from gigatok_jax.data.folder import image_folder_source  # noqa: F401  (re-exported)
from gigatok_jax.errors import ConfigError, DataError

SOURCES = ('demo', 'digits', 'array_record', 'tfds')
SPLITS = ('train', 'eval')

# Every data config key this package reads, with its default. Missing keys fall back to these.
DEFAULTS: dict[str, Any] = {
    'source': 'demo',              # 'demo' | 'digits' | 'array_record' | 'tfds'
    'image_size': 256,             # S: square side of every image; a positive multiple of 16
    'train_path': '',              # array_record: prepared dir or glob of shards (train split)
    'eval_path': '',               # array_record: prepared dir or glob of shards (eval split)
    'tfds_name': 'imagenet2012',   # tfds: dataset name
    'tfds_data_dir': '',           # tfds: data_dir ('' = tfds default, ~/tensorflow_datasets)
    'tfds_train_split': 'train',   # tfds: split used for training
    'tfds_eval_split': 'validation',  # tfds: split used for evaluation
    'crop_max_scale': 1.25,        # train: short side resized to [S, round(S * this)]; >= 1
    'random_flip': True,           # train: horizontal flip with p = 0.5
    'worker_count': 0,             # grain worker processes (0 = in-process threads only)
    'read_threads': 8,             # threads reading + augmenting records per process
    'demo_num_samples': 10000,     # demo: virtual length of the train split
    'prepare_source': 'image_folder',  # prepare: 'image_folder' | 'imagenet2012'
    'prepare_input': '',           # prepare: image folder, or dir with the ImageNet tar files
    'prepare_output': '',          # prepare: output directory
    'prepare_num_shards': 16,      # prepare: number of ArrayRecord shards (image_folder)
}

_EVAL_ORDER_SEED = 0


def default_data_config() -> ml_collections.ConfigDict:
  """A ConfigDict with every data key and its default (for recipes and tests)."""
  return ml_collections.ConfigDict(dict(DEFAULTS))


def data_value(data_cfg, key: str):
  value = data_cfg.get(key, None) if hasattr(data_cfg, 'get') else getattr(data_cfg, key, None)
  return DEFAULTS[key] if value is None else value


def is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def derive_seed(seed: int, stream: int) -> int:
  """An independent 32-bit seed per random stream (grain seeds must be < 2**32)."""
  seed = int(seed) % 2**64
  return int(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, stream]).generate_state(1)[0])


def process_info(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return int(process_index), int(process_count)


# ----------------------------------------------------------------------------------------- sources

def _array_record_source(data_cfg, split: str) -> records.ImageRecordSource:
  key = 'train_path' if split == 'train' else 'eval_path'
  path = data_value(data_cfg, key)
  if not path:
    raise ConfigError(f'data.{key}', 'is empty; set it to a directory written by prepare or a '
                      'glob of .array_record shard files')
  paths = records.find_shard_files(path)
  if not paths:
    raise ConfigError(f'data.{key}',
                      f'no ArrayRecord files match {records.shard_pattern(path)!r}')
  # Complete or refused: every shard metadata.json lists, with its record count (records.py).
  shards = records.check_shards(path, paths, records.read_metadata(path))
  try:
    source = records.ImageRecordSource(shards)
  except Exception as e:  # array_record raises RuntimeError/ValueError for non-ArrayRecord files.
    raise ConfigError(f'data.{key}', f'cannot open the ArrayRecord files at {path!r}: '
                      f'{type(e).__name__}: {e}') from None
  return source


def _tfds_source(data_cfg, split: str):
  from gigatok_jax.data import tfds_extra  # pylint: disable=import-outside-toplevel
  tfds = tfds_extra.require('data.source', 'tfds')   # the optional [tfds] extra
  name = data_value(data_cfg, 'tfds_name')
  split_key = 'tfds_train_split' if split == 'train' else 'tfds_eval_split'
  split_name = data_value(data_cfg, split_key)
  data_dir = data_value(data_cfg, 'tfds_data_dir') or None
  if not name:
    raise ConfigError('data.tfds_name', 'is empty; set it to a tfds dataset name')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends; their messages list every dataset.
    raise ConfigError('data.tfds_name',
                      f'unknown tfds dataset {name!r} ({_first_line(e)})') from None
  available = dict(builder.info.splits.items()) if builder.info.splits else {}
  if available and split_name not in available:
    raise ConfigError(f'data.{split_key}',
                      f'{name} has no split {split_name!r} (available: {sorted(available)})')
  try:
    return tfds.data_source(name, split=split_name, data_dir=data_dir, download=False)
  except Exception as e:
    if not builder.is_prepared():
      raise ConfigError('data.tfds_data_dir',
                        f'tfds dataset {name!r} is not prepared under '
                        f'{data_dir or "the default tfds data_dir"} (expected {builder.data_dir}); '
                        f"build it as ArrayRecord first (data.prepare_source='imagenet2012' for "
                        f'ImageNet)') from None
    raise ConfigError('data.tfds_data_dir',
                      f'cannot read tfds dataset {name!r} split {split_name!r} from '
                      f'{builder.data_dir} (it must be in the array_record file format): '
                      f'{_first_line(e)}') from None


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'


def make_source(data_cfg, split: str):
  """The random-access source of `split` ('train' | 'eval') for `data_cfg.source`."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  source = data_value(data_cfg, 'source')
  if source == 'demo':
    return demo.DemoSource(split, data_value(data_cfg, 'image_size'),
                           data_value(data_cfg, 'demo_num_samples'))
  if source == 'digits':
    return demo.DigitsSource(split, data_value(data_cfg, 'image_size'))
  if source == 'array_record':
    return _array_record_source(data_cfg, split)
  if source == 'tfds':
    return _tfds_source(data_cfg, split)
  raise ConfigError('data.source', f'must be one of {SOURCES}, got {source!r}')


# -------------------------------------------------------------------------------------- validation

# ------------------------------------------------------------------------------------------- maps

def _train_map(record, rng: np.random.Generator, *, size: int, max_scale: float, flip: bool,
               crop: bool) -> dict:
  """Train augmentation of one record; draws: crop (length, top, left) then flip."""
  image = transforms.ensure_rgb_array(record['image'])
  if crop:
    image = transforms.random_resized_crop(image, size, max_scale, rng)
  else:
    image = transforms.center_crop(image, size)  # identity for demo records (already S x S)
  if flip:
    image = transforms.random_flip(image, rng)
  return {'image': image, 'label': np.int32(record['label'])}


def _eval_map(record, *, size: int) -> dict:
  image = transforms.center_crop(record['image'], size)
  return {'image': image, 'label': np.int32(record['label']), 'mask': np.bool_(record['mask'])}


def _to_model_batch(batch: dict) -> dict:
  out = {'image': transforms.to_float(batch['image']), 'label': batch['label'].astype(np.int32)}
  if 'mask' in batch:
    out['mask'] = batch['mask'].astype(bool)
  return out


class _PaddedEvalSource:
  """Records `order[i]` of `source` for i < len(order), then blank padding up to `total`."""

  def __init__(self, source, order: np.ndarray, total: int, image_size: int):
    self._source = source
    self._order = order
    self._total = total
    self._size = image_size

  def __len__(self) -> int:
    return self._total

  def __getitem__(self, index) -> dict:
    index = int(index)
    if index < len(self._order):
      record = self._source[int(self._order[index])]
      return {'image': record['image'], 'label': record['label'], 'mask': True}
    return {'image': np.zeros((self._size, self._size, 3), np.uint8), 'label': 0, 'mask': False}


def finish_batches(ds: grain.MapDataset, data_cfg, local_batch: int, drop_remainder: bool,
            to_batch=_to_model_batch):
  # Batch in the MapDataset domain: a batch is then one unit of work for a reader thread or a
  # grain worker process, so its contents do not depend on read_threads / worker_count.
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  threads = data_value(data_cfg, 'read_threads')
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
  # uint8 -> float32 after the prefetch buffer (4x smaller buffer); in the workers when there are.
  ds = ds.map(to_batch)
  workers = data_value(data_cfg, 'worker_count')
  if workers > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():
      # grain workers read absl flags; outside absl.app (notebooks, pytest) mark them parsed.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


# -------------------------------------------------------------------------------------- iterators

def make_train_iterator(data_cfg, *, global_batch_size: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None,
                        batch_size_key: str = 'global_batch_size'):
  """Infinite, checkpointable train iterator of this process's batches (see the module docstring).

  `process_index` / `process_count` default to `jax.process_index()` / `jax.process_count()`.
  `batch_size_key` names the config key of `global_batch_size` in errors.
  """
  process_index, process_count = process_info(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ConfigError(batch_size_key, f'{global_batch_size} must be positive and '
                      f'divisible by the number of processes ({process_count})')
  local_batch = global_batch_size // process_count
  source = make_source(data_cfg, 'train')
  if len(source) == 0:
    raise DataError(f'the train split of data.source={data_value(data_cfg, "source")!r} is empty')
  augment = functools.partial(
      _train_map, size=data_value(data_cfg, 'image_size'),
      max_scale=float(data_value(data_cfg, 'crop_max_scale')),
      flip=bool(data_value(data_cfg, 'random_flip')),
      crop=data_value(data_cfg, 'source') not in ('demo', 'digits'))
  ds = grain.MapDataset.source(source).shuffle(seed=derive_seed(seed, 1)).repeat()
  ds = ds.random_map(augment, seed=derive_seed(seed, 2))
  ds = ds[process_index::process_count]
  return finish_batches(ds, data_cfg, local_batch, drop_remainder=True)


def make_eval_iterator(data_cfg, *, batch_size: int, num_images: int | None = None,
                       process_index: int | None = None, process_count: int | None = None,
                       batch_size_key: str = 'global_batch_size'):
  """Finite, deterministic eval iterator with padded, masked batches (see the module docstring).

  `batch_size` is global; each process yields ceil(n / batch_size) batches of batch_size / P. `n` is
  `num_images`, capped (with a warning) at the size of the eval split; None means the whole split.
  """
  process_index, process_count = process_info(process_index, process_count)
  if batch_size <= 0 or batch_size % process_count:
    raise ConfigError(batch_size_key, f'{batch_size} must be positive and divisible by the '
                      f'number of processes ({process_count})')
  source = make_source(data_cfg, 'eval')
  available = len(source)
  n = available if num_images is None else int(num_images)
  if n > available:
    logging.warning('eval: asked for %d images but the eval split has %d; using %d', n, available,
                    available)
    n = available
  if n <= 0:
    raise DataError(f'eval: nothing to evaluate (eval split size {available}, num_images '
                    f'{num_images})')
  order = np.random.default_rng(_EVAL_ORDER_SEED).permutation(available)[:n]
  total = math.ceil(n / batch_size) * batch_size
  size = data_value(data_cfg, 'image_size')
  padded = _PaddedEvalSource(source, order, total, size)
  ds = grain.MapDataset.source(padded).map(functools.partial(_eval_map, size=size))
  ds = ds[process_index::process_count]
  return finish_batches(ds, data_cfg, batch_size // process_count, drop_remainder=False)


def num_eval_batches(num_images: int, batch_size: int) -> int:
  """Batches per process that `make_eval_iterator` yields for `num_images` (after capping)."""
  return math.ceil(num_images / batch_size)


__all__ = [
    'DEFAULTS', 'SOURCES', 'default_data_config', 'image_folder_source', 'make_eval_iterator',
    'make_source', 'make_train_iterator', 'num_eval_batches',
]
