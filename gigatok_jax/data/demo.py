"""The embedded demo dataset: crops of the real photographs that ship inside pip packages.

Nothing is downloaded. The photos are the RGB sample images stored in the installed scikit-image
(`skimage/data/*.png|jpg`, the files behind `skimage.data.astronaut()` etc.) and scikit-learn
(`sklearn/datasets/images/*.jpg`, behind `load_sample_images()`) packages. Only files inside the
installed packages are used (scikit-image images that need a pooch download are left out); the files
are read directly with PIL, so neither package is imported. A photo whose package is not installed is
skipped; with none available, `DataError`.

The label of a record is the index of its photo in `demo_photo_names()` (about 10 classes).

Splits (`DemoSource`):
- 'train': a virtual dataset of `num_samples` records. Record i is a square crop of photo
  i % num_photos whose side (a random fraction in [0.5, 1] of the photo's short side: the scales of
  the two eval crops) and position are drawn from a generator seeded with i alone, resized to
  image_size x image_size (bicubic). Same i, same crop, in every process and every run.
- 'eval': 2 fixed crops per photo: the whole centred square, and a 2x zoom on its centre.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

from gigatok_jax.data import transforms
from gigatok_jax.errors import DataError

# (name, top-level package, path inside the package). RGB photographs only: the colour wheel and the
# RGBA logo in skimage/data are synthetic and left out.
_PHOTOS = (
    ('astronaut', 'skimage', 'data/astronaut.png'),
    ('coffee', 'skimage', 'data/coffee.png'),
    ('chelsea', 'skimage', 'data/chelsea.png'),
    ('rocket', 'skimage', 'data/rocket.jpg'),
    ('immunohistochemistry', 'skimage', 'data/ihc.png'),
    ('hubble_deep_field', 'skimage', 'data/hubble_deep_field.jpg'),
    ('retina', 'skimage', 'data/retina.jpg'),
    ('motorcycle', 'skimage', 'data/motorcycle_left.png'),
    ('china', 'sklearn', 'datasets/images/china.jpg'),
    ('flower', 'sklearn', 'datasets/images/flower.jpg'),
)

# Seeds the train crops; a constant so that record i is the same crop in every run.
_TRAIN_CROP_SEED = 20240607
_MIN_CROP_FRACTION = 0.5
EVAL_CROPS_PER_PHOTO = 2


def _package_dir(package: str) -> str | None:
  """The installed directory of `package`, found without importing it."""
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=1)
def _load_photos() -> tuple[tuple[str, np.ndarray], ...]:
  """Decodes the available photos once per process: ((name, uint8 HxWx3), ...)."""
  photos = []
  for name, package, rel_path in _PHOTOS:
    root = _package_dir(package)
    if root is None:
      continue
    path = os.path.join(root, rel_path)
    if not os.path.isfile(path):
      continue
    with Image.open(path) as im:
      array = np.asarray(im.convert('RGB'))
    array.setflags(write=False)
    photos.append((name, array))
  if not photos:
    raise DataError('demo dataset: no sample photographs found; install scikit-image and/or '
                    'scikit-learn (their sample images are the demo data)')
  return tuple(photos)


def demo_photo_names() -> list[str]:
  """Names of the available demo photos; the label of a record is an index into this list."""
  return [name for name, _ in _load_photos()]


def demo_photos() -> list[np.ndarray]:
  """The full-size demo photos as read-only uint8 HxWx3 arrays."""
  return [array for _, array in _load_photos()]


class DemoSource:
  """Random-access source (grain-compatible) of demo crops: {'image': uint8 SxSx3, 'label': int}.

  Holds no pixels itself (photos are loaded lazily per process), so it pickles cheaply into grain
  worker processes.
  """

  def __init__(self, split: str, image_size: int, num_samples: int = 10000):
    if split not in ('train', 'eval'):
      raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    self.split = split
    self.image_size = int(image_size)
    self.num_samples = int(num_samples)

  def __len__(self) -> int:
    if self.split == 'train':
      return self.num_samples
    return EVAL_CROPS_PER_PHOTO * len(_load_photos())

  def __getitem__(self, index) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'demo {self.split} index {index} out of range [0, {len(self)})')
    photos = _load_photos()
    if self.split == 'train':
      label = index % len(photos)
      box = self._train_box(photos[label][1].shape, index)
    else:
      label, kind = divmod(index, EVAL_CROPS_PER_PHOTO)
      box = self._eval_box(photos[label][1].shape, kind)
    top, left, bottom, right = box
    crop = photos[label][1][top:bottom, left:right]
    image = transforms.resize_square(np.ascontiguousarray(crop), self.image_size)
    return {'image': image, 'label': label}

  @staticmethod
  def _train_box(shape, index: int):
    h, w = shape[:2]
    rng = np.random.default_rng([_TRAIN_CROP_SEED, index])
    side = int(round(min(h, w) * rng.uniform(_MIN_CROP_FRACTION, 1.0)))
    side = max(1, min(side, h, w))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return transforms.square_crop_box(h, w, side, top, left)

  @staticmethod
  def _eval_box(shape, kind: int):
    h, w = shape[:2]
    side = min(h, w) if kind == 0 else max(1, min(h, w) // 2)
    return transforms.square_crop_box(h, w, side, (h - side) // 2, (w - side) // 2)

  def __repr__(self) -> str:
    return (f'DemoSource(split={self.split!r}, image_size={self.image_size}, '
            f'num_samples={len(self)})')


_DIGITS_EVAL_SEED = 1797
DIGITS_EVAL_SIZE = 197   # held-out digits; the other 1600 train


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images (1797, 8, 8) uint8 dark ink on white, labels, permutation) of scikit-learn's digits."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  d = load_digits()
  images = np.round(255.0 - d.images * (255.0 / 16.0)).astype(np.uint8)
  order = np.random.default_rng(_DIGITS_EVAL_SEED).permutation(len(images))
  return images, d.target.astype(np.int64), order


class DigitsSource:
  """The 1797 real 8x8 handwritten digits of scikit-learn (10 classes), upsampled bicubically to
  S x S RGB: the embedded class-conditional data of the AR demo. A fixed 197-image subset is the
  eval split. Records are final images (no crop; flips would change the digits)."""

  def __init__(self, split: str, image_size: int):
    if split not in ('train', 'eval'):
      raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    self.split = split
    self.image_size = int(image_size)

  def _indices(self) -> np.ndarray:
    order = _load_digits()[2]
    return order[:DIGITS_EVAL_SIZE] if self.split == 'eval' else order[DIGITS_EVAL_SIZE:]

  def __len__(self) -> int:
    return len(self._indices())

  def __getitem__(self, index) -> dict:
    images, labels, _ = _load_digits()
    i = int(self._indices()[int(index)])
    pil = Image.fromarray(images[i]).resize((self.image_size,) * 2, Image.BICUBIC)
    gray = np.asarray(pil, np.uint8)
    return {'image': np.repeat(gray[:, :, None], 3, axis=2), 'label': int(labels[i])}

  def __repr__(self) -> str:
    return f'DigitsSource(split={self.split!r}, image_size={self.image_size}, num_samples={len(self)})'
