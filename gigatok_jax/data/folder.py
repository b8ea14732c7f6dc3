"""Reading images straight from a folder: file listing, checked loading, and the reconstruct source.

An image counts as readable when PIL can open it *and* decode all of its pixels (`Image.load()`), which
catches truncated files that `Image.open` alone accepts. Unreadable files are skipped and reported
(count plus the first few names), never fatal. Folders may be on gs:// too (`fileio`): one listing
request per directory, one download per image.
"""

from __future__ import annotations

import io
import os
import posixpath

from absl import logging
import numpy as np
from PIL import Image

from gigatok_jax import fileio
from gigatok_jax.data import records
from gigatok_jax.data import transforms
from gigatok_jax.errors import ConfigError, DataError

# Formats stored as the original file bytes; anything else is re-encoded as PNG.
PASSTHROUGH_FORMATS = ('JPEG', 'PNG', 'MPO')
_REPORT_FIRST = 5


class UnreadableImage(Exception):
  """A file is not a decodable image; the message is the reason."""


def list_files(folder: str, recursive: bool = False) -> list[str]:
  """Sorted paths (relative to `folder`) of the regular, non-hidden files in `folder`."""
  if fileio.is_remote(folder):
    return _list_remote(folder, recursive)
  found = []
  if recursive:
    for root, dirs, files in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      rel_root = os.path.relpath(root, folder)
      for name in files:
        if not name.startswith('.'):
          found.append(os.path.normpath(os.path.join(rel_root, name)))
  else:
    for name in os.listdir(folder):
      if not name.startswith('.') and os.path.isfile(os.path.join(folder, name)):
        found.append(name)
  return sorted(found)


def _list_remote(folder: str, recursive: bool) -> list[str]:
  """`list_files` on an object store: a listing per directory, files and prefixes told apart by
  the listing itself (no request per entry)."""
  found, todo = [], [""]
  while todo:
    rel = todo.pop()
    dirs, files = fileio.scan(fileio.join(folder, rel) if rel else folder)
    found += [posixpath.join(rel, f) for f in files if not f.startswith('.')]
    if recursive:
      todo += [posixpath.join(rel, d) for d in dirs if not d.startswith('.')]
  return sorted(found)


def read_image_file(path: str) -> tuple[bytes, Image.Image]:
  """Reads and fully decodes one image file.

  Returns (bytes to store, decoded PIL image): the file's own bytes for PNG/JPEG, a PNG re-encoding of
  its RGB conversion for other formats. Raises `UnreadableImage` with the reason otherwise.
  """
  try:
    data = fileio.read_bytes(path)
  except OSError as e:
    raise UnreadableImage(f'cannot read file: {e.strerror or e}') from None
  if not data:
    raise UnreadableImage('empty file')
  try:
    pil = Image.open(io.BytesIO(data))
    pil.load()
    image_format = pil.format
    rgb = records.pil_to_rgb(pil)
  except Image.DecompressionBombError as e:
    raise UnreadableImage(f'image too large: {e}') from None
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    # PIL: UnidentifiedImageError (an OSError) for non-images, OSError for truncated data.
    raise UnreadableImage(f'{type(e).__name__}: {e}') from None
  if image_format in PASSTHROUGH_FORMATS:
    return data, rgb
  return records.encode_png(np.asarray(rgb)), rgb


def report_skipped(skipped: list[tuple[str, str]], what: str) -> None:
  """Logs how many files were skipped and the first few names with their reasons."""
  if not skipped:
    return
  first = '; '.join(f'{name} ({reason})' for name, reason in skipped[:_REPORT_FIRST])
  more = f' and {len(skipped) - _REPORT_FIRST} more' if len(skipped) > _REPORT_FIRST else ''
  logging.warning('%s: skipped %d unreadable file(s): %s%s', what, len(skipped), first, more)


class FolderImageSource:
  """The readable images of a plain folder, sorted by file name, ADM-centre-cropped to S x S.

  Record i -> {'image': float32 SxSx3 in [-1, 1], 'name': file name}. Every file is decoded once at
  construction to find the unreadable ones (`self.skipped`: [(name, reason)]); records decode again
  on access, so memory stays small for large folders.
  """

  def __init__(self, folder: str, image_size: int):
    self.folder = folder
    self.image_size = int(image_size)
    self.names: list[str] = []
    self.skipped: list[tuple[str, str]] = []
    for name in list_files(folder):
      try:
        read_image_file(fileio.join(folder, name))
      except UnreadableImage as e:
        self.skipped.append((name, str(e)))
      else:
        self.names.append(name)

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index) -> dict:
    name = self.names[int(index)]
    try:
      _, rgb = read_image_file(fileio.join(self.folder, name))
    except UnreadableImage as e:
      raise DataError(f'{fileio.join(self.folder, name)}: became unreadable: {e}') from None
    image = transforms.center_crop(np.asarray(rgb), self.image_size)
    return {'image': transforms.to_float(image), 'name': name}

  def __repr__(self) -> str:
    return (f'FolderImageSource({self.folder!r}, image_size={self.image_size}, '
            f'num_images={len(self)}, skipped={len(self.skipped)})')


def image_folder_source(path: str, image_size: int, *, key: str | None = None) -> FolderImageSource:
  """Source of the images of a plain folder for the reconstruct mode (see `FolderImageSource`).

  Unreadable files are skipped and reported in the log. A missing folder or one without readable
  images raises `ConfigError(key, ...)` when the config `key` holding `path` is given, else
  `DataError`.
  """

  def fail(message: str):
    if key:
      raise ConfigError(key, message)
    raise DataError(message)

  if not path or not fileio.isdir(path):
    fail(f'image folder {path!r} does not exist')
  source = FolderImageSource(path, image_size)
  report_skipped(source.skipped, f'image folder {path}')
  if not len(source):
    fail(f'image folder {path!r} has no readable images '
         f'({len(source.skipped)} unreadable file(s) skipped)')
  return source
