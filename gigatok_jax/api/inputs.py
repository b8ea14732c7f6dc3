"""What the API accepts as images and codes, turned into the arrays the models take.

Images: a PIL image, a file path (str or pathlib.Path), a uint8 (H, W, 3) array, a uint8
(N, H, W, 3) batch, or a list / tuple mixing these. Any size: the short side is resized to the
model's resolution (bicubic, after ADM's box pre-halving) and the centre square is cut — the same
crop the eval split gets in training (data/transforms.center_crop). PIL images and files of any
mode (grey, palette, RGBA) are converted to RGB; arrays must already be RGB uint8, since a grey or
float array is more often a mistake (a channel picked by accident, a [-1, 1] tensor) than a wish.

Every refusal is a ValueError of one line that names the image (its position) or the codes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from gigatok_jax.data import transforms


class InputError(ValueError):
  """Bad images or codes given to the API; the message is one line naming the culprit."""


def _one_image(item: Any, index: int) -> np.ndarray:
  """One image of any accepted form -> uint8 (H, W, 3)."""
  if isinstance(item, (str, os.PathLike)):
    from gigatok_jax.data import folder  # pylint: disable=import-outside-toplevel
    try:
      _, rgb = folder.read_image_file(os.fspath(item))
    except folder.UnreadableImage as e:
      raise InputError(f"image {index} ({os.fspath(item)}): {e}") from None
    return np.asarray(rgb)
  if isinstance(item, Image.Image):
    from gigatok_jax.data import records  # pylint: disable=import-outside-toplevel
    return np.asarray(records.pil_to_rgb(item))
  array = np.asarray(item)
  if array.dtype != np.uint8:
    raise InputError(f"image {index} has dtype {array.dtype}; pass uint8 RGB values in 0..255 "
                     "(e.g. np.asarray(pil_image) or (x * 255).round().astype(np.uint8))")
  if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
    raise InputError(f"image {index} is greyscale (shape {array.shape}); pass RGB (H, W, 3), "
                     "e.g. np.repeat(image[..., None], 3, axis=-1)")
  if array.ndim != 3 or array.shape[2] != 3:
    raise InputError(f"image {index} has shape {array.shape}; expected (H, W, 3) RGB")
  if min(array.shape[:2]) < 1:
    raise InputError(f"image {index} is empty (shape {array.shape})")
  return array


def images_to_batch(images: Any, size: int) -> np.ndarray:
  """Any accepted image input -> uint8 (N, size, size, 3), centre-cropped as documented above."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    items: Sequence[Any] = list(images)
  elif isinstance(images, (list, tuple)):
    items = images
  else:
    items = [images]
  if len(items) == 0:
    raise InputError("no images given")
  out = []
  for i, item in enumerate(items):
    image = _one_image(item, i)
    out.append(transforms.center_crop(image, size))
  return np.stack(out)


def check_codes(codes: Any, num_tokens: int, codebook_size: int) -> np.ndarray:
  """Codes (N, num_tokens) or one sequence (num_tokens,) of ints in [0, codebook_size) -> int32."""
  array = np.asarray(codes)
  if array.ndim == 1:
    array = array[None]
  if array.ndim != 2 or array.shape[0] == 0:
    raise InputError(f"codes have shape {np.shape(codes)}; expected (N, {num_tokens})")
  if not np.issubdtype(array.dtype, np.integer):
    raise InputError(f"codes have dtype {array.dtype}; expected integers")
  if array.shape[1] != num_tokens:
    raise InputError(f"codes have {array.shape[1]} tokens per image; this tokenizer uses "
                     f"{num_tokens}")
  bad = (array < 0) | (array >= codebook_size)
  if bad.any():
    n, t = np.argwhere(bad)[0]
    raise InputError(f"code {int(array[n, t])} (image {n}, token {t}) is out of range: the "
                     f"codebook has {codebook_size} entries (0..{codebook_size - 1})")
  return array.astype(np.int32)


def check_classes(classes: Any, num_classes: int) -> np.ndarray:
  """Class ids (an int or a sequence of ints) in [0, num_classes) -> int32 (N,)."""
  array = np.atleast_1d(np.asarray(classes))
  if array.ndim != 1 or array.size == 0:
    raise InputError(f"classes must be an int or a non-empty list of ints, got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.integer):
    raise InputError(f"classes must be integers, got dtype {array.dtype}")
  bad = (array < 0) | (array >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise InputError(f"class {int(array[i])} (position {i}) is out of range: this generator has "
                     f"{num_classes} classes (0..{num_classes - 1})")
  return array.astype(np.int32)
