"""Dataset preparation: turn an image folder or the ImageNet tar files into ArrayRecord shards.

Entry point: `run_prepare(data_cfg) -> summary dict`, driven by the config keys
  data.prepare_source      'image_folder' | 'imagenet2012'
  data.prepare_input       the image folder, or the directory holding the ImageNet tar files
  data.prepare_output      the output directory (must not already hold a prepared dataset)
  data.prepare_num_shards  number of shard files (image_folder only; tfds chooses its own)

image_folder: class sub-folders give the labels (sorted names -> 0..C-1, files found recursively in
each); a folder without sub-folders is one class (label 0). Every file is opened and fully decoded with
PIL; unreadable or truncated files are skipped, counted and reported, never fatal. Output: our record
format (`records.py`) in `data-XXXXX-of-NNNNN.array_record` shards plus `metadata.json`, written last,
so a directory with `metadata.json` is complete; it lists every shard with its record count, which
training checks (`records.check_shards`). Train on it with data.source='array_record'. Input and
output may be gs:// folders (`fileio`; shards are written locally and uploaded whole).

imagenet2012: runs the tfds `imagenet2012` builder with file_format='array_record' over the manually
downloaded tar files; it needs the optional [tfds] extra (`pip install -e '.[tfds]'`: TensorFlow
Datasets and TensorFlow). Train on it with data.source='tfds', data.tfds_name='imagenet2012',
data.tfds_data_dir=<prepare_output>. The tfds builder and its tar files stay on local disks: a
gs:// input or output is refused with one line.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import posixpath
import time

from absl import logging

from gigatok_jax import console, fileio
from gigatok_jax.data import folder as folder_lib
from gigatok_jax.data import records
from gigatok_jax.data import tfds_extra
from gigatok_jax.errors import ConfigError, DataError

PREPARE_SOURCES = ('image_folder', 'imagenet2012')
IMAGENET_REQUIRED_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
_MAX_SKIPPED_IN_METADATA = 100
_CHUNK = 256  # files decoded concurrently; bounds the memory held by in-flight images.


def _cfg(data_cfg, key: str, default=None):
  return data_cfg.get(key, default) if hasattr(data_cfg, 'get') else getattr(data_cfg, key, default)


def run_prepare(data_cfg, *, progress: bool = True) -> dict:
  """Prepares the dataset described by `data_cfg.prepare_*` and returns a summary dict."""
  source = _cfg(data_cfg, 'prepare_source', 'image_folder')
  input_dir = _cfg(data_cfg, 'prepare_input', '')
  output_dir = _cfg(data_cfg, 'prepare_output', '')
  if source not in PREPARE_SOURCES:
    raise ConfigError('data.prepare_source', f'must be one of {PREPARE_SOURCES}, got {source!r}')
  if not input_dir:
    raise ConfigError('data.prepare_input', 'is empty; set it to the input directory')
  if not output_dir:
    raise ConfigError('data.prepare_output', 'is empty; set it to the output directory')
  if source == 'image_folder':
    num_shards = _cfg(data_cfg, 'prepare_num_shards', 16)
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
      raise ConfigError('data.prepare_num_shards', f'must be a positive int, got {num_shards!r}')
    return prepare_image_folder(input_dir, output_dir, num_shards, progress=progress)
  return prepare_imagenet2012(input_dir, output_dir)


def _collect_files(input_dir: str) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
  """Lists candidate files: ([(relative path, label)], class names, [(skipped name, reason)])."""
  dirs, plain = fileio.scan(input_dir)
  entries = sorted(e for e in dirs + plain if not e.startswith('.'))
  class_dirs = [e for e in dirs if not e.startswith('.')]
  skipped = []
  if not class_dirs:
    class_names = [fileio.basename(os.path.normpath(input_dir) if not fileio.is_remote(input_dir)
                                   else input_dir)]
    return [(name, 0) for name in folder_lib.list_files(input_dir)], class_names, skipped
  files = []
  join = posixpath.join if fileio.is_remote(input_dir) else os.path.join
  for label, class_name in enumerate(class_dirs):
    for name in folder_lib.list_files(fileio.join(input_dir, class_name), recursive=True):
      files.append((join(class_name, name), label))
  for e in entries:
    if e not in class_dirs:
      skipped.append((e, 'not inside a class sub-folder'))
  return files, class_dirs, skipped


def _check_output_dir(output_dir: str) -> None:
  if fileio.isdir(output_dir):
    existing = records.find_shard_files(output_dir)
    if existing or fileio.exists(fileio.join(output_dir, records.METADATA_FILE)):
      raise ConfigError('data.prepare_output',
                        f'{output_dir!r} already holds a prepared dataset; remove it or choose '
                        'another directory')
  elif fileio.exists(output_dir):
    raise ConfigError('data.prepare_output', f'{output_dir!r} exists and is not a directory')


def _read_one(path: str):
  try:
    data, _ = folder_lib.read_image_file(path)
    return data, None
  except folder_lib.UnreadableImage as e:
    return None, str(e)


def prepare_image_folder(input_dir: str, output_dir: str, num_shards: int, *,
                         progress: bool = True, num_threads: int | None = None) -> dict:
  """Writes the images of `input_dir` as ArrayRecord shards; see the module docstring."""
  if not fileio.isdir(input_dir):
    raise ConfigError('data.prepare_input', f'image folder {input_dir!r} does not exist')
  _check_output_dir(output_dir)
  files, class_names, skipped = _collect_files(input_dir)
  if not files:
    raise DataError(f'image folder {input_dir!r} holds no files')
  num_shards = max(1, min(num_shards, len(files)))
  fileio.makedirs(output_dir)
  # Shard k gets the contiguous candidate range [k*n/N, (k+1)*n/N); skipped files leave it short.
  bounds = [len(files) * k // num_shards for k in range(num_shards + 1)]
  class_counts = [0] * len(class_names)
  shard_info = []
  num_threads = num_threads or min(16, (os.cpu_count() or 1) * 2)
  start = time.time()
  bar = console.progress_bar(len(files), 'prepare', enabled=progress, unit='img')
  try:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      for k in range(num_shards):
        path = fileio.join(output_dir, records.shard_name(k, num_shards))
        with records.ShardWriter(path) as writer:
          for chunk_start in range(bounds[k], bounds[k + 1], _CHUNK):
            chunk = files[chunk_start:min(chunk_start + _CHUNK, bounds[k + 1])]
            results = pool.map(_read_one, [fileio.join(input_dir, rel) for rel, _ in chunk])
            for (rel, label), (data, reason) in zip(chunk, results):
              if data is None:
                skipped.append((rel, reason))
              else:
                writer.write(data, label, rel)
                class_counts[label] += 1
              bar.update(1)
            bar.set_postfix(skipped=len(skipped))
        shard_info.append({'file': fileio.basename(path), 'num_records': writer.num_records})
  except BaseException:
    # Leave no partial dataset behind: a rerun into the same directory must be possible.
    for info in shard_info:
      fileio.remove(fileio.join(output_dir, info['file']))
    raise
  finally:
    bar.close()
  num_records = sum(class_counts)
  folder_lib.report_skipped(skipped, f'prepare {input_dir}')
  if not num_records:
    for info in shard_info:
      fileio.remove(fileio.join(output_dir, info['file']))
    raise DataError(f'image folder {input_dir!r}: none of its {len(files)} file(s) is a readable '
                    f'image (first: {skipped[0][0]}: {skipped[0][1]})')
  metadata = {
      'format': 'gigatok_jax.image_records',
      'record_version': records.RECORD_VERSION,
      'source': 'image_folder',
      'input': fileio.resolve(input_dir),
      'num_records': num_records,
      'num_classes': len(class_names),
      'class_names': class_names,
      'class_counts': dict(zip(class_names, class_counts)),
      'shards': shard_info,
      'num_skipped': len(skipped),
      'skipped': [{'file': n, 'reason': r} for n, r in skipped[:_MAX_SKIPPED_IN_METADATA]],
  }
  with fileio.atomic_write(fileio.join(output_dir, records.METADATA_FILE)) as f:
    json.dump(metadata, f, indent=1)
  summary = {k: metadata[k] for k in ('source', 'num_records', 'num_classes', 'num_skipped')}
  summary.update(output=output_dir, num_shards=num_shards,
                 skipped_files=[n for n, _ in skipped[:10]], seconds=round(time.time() - start, 2),
                 use_with={'data.source': 'array_record', 'data.train_path': output_dir})
  logging.info('prepared %d images (%d classes, %d skipped) into %s', num_records,
               len(class_names), len(skipped), output_dir)
  return summary


def prepare_imagenet2012(manual_dir: str, output_dir: str) -> dict:
  """Builds tfds `imagenet2012` as ArrayRecord from the tar files in `manual_dir`."""
  # The tfds builder decodes the tar files with TensorFlow: both come with the [tfds] extra (checked
  # first: installing it is quicker than downloading the tar files).
  needs = ('tensorflow_datasets', 'tensorflow')
  for key, path in (('data.prepare_input', manual_dir), ('data.prepare_output', output_dir)):
    if fileio.is_remote(path):
      raise ConfigError(key, f'{path}: the imagenet2012 preparation reads and writes local disks '
                        'only (prepare locally, then copy the output to the bucket)')
  tfds_extra.check_installed('data.prepare_source', 'imagenet2012', needs)
  missing = [f for f in IMAGENET_REQUIRED_TARS if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise DataError(f'imagenet2012: missing {", ".join(missing)} in {manual_dir!r} '
                    f'(config key data.prepare_input). Download the ILSVRC2012 files '
                    f'{" and ".join(IMAGENET_REQUIRED_TARS)} from image-net.org into that directory.')
  tfds = tfds_extra.require('data.prepare_source', 'imagenet2012', needs)
  os.makedirs(output_dir, exist_ok=True)
  start = time.time()
  builder = tfds.builder('imagenet2012', data_dir=output_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  return {
      'source': 'imagenet2012', 'output': output_dir, 'splits': splits,
      'num_classes': builder.info.features['label'].num_classes,
      'seconds': round(time.time() - start, 2),
      'use_with': {'data.source': 'tfds', 'data.tfds_name': 'imagenet2012',
                   'data.tfds_data_dir': output_dir},
  }
