"""Per-image operations shared by the data sources and the grain pipeline.

Everything here works on host numpy arrays (uint8, HxWx3) and PIL, never on JAX arrays: these run in
grain threads / worker processes. Resampling always goes through PIL, whose resize is antialiased.

The train and eval crops follow ADM (guided-diffusion), which LlamaGen and GigaTok use for ImageNet:
- train: the short side is resized to a random length L in [S, round(S * max_scale)] (inclusive), a
  random S x S window is cut, and the result is flipped left-right with p = 0.5;
- eval: the short side is resized to S and the centre S x S window is cut.
Before the bicubic resize, ADM halves the image with a box filter while its short side is at least
twice the target; we do the same so that crops match the reference pipeline.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def ensure_rgb_array(image: np.ndarray) -> np.ndarray:
  """Returns `image` as a contiguous uint8 HxWx3 array (grey and RGBA inputs are converted)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got dtype {image.dtype}')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3:
    raise ValueError(f'expected an HxWxC image, got shape {image.shape}')
  channels = image.shape[2]
  if channels == 1:
    image = np.repeat(image, 3, axis=2)
  elif channels == 4:
    image = image[:, :, :3]
  elif channels != 3:
    raise ValueError(f'expected 1, 3 or 4 channels, got shape {image.shape}')
  return np.ascontiguousarray(image)


def _box_halve(pil: Image.Image, target_short: int) -> Image.Image:
  """ADM's pre-reduction: halve with a box filter while the short side is >= 2 * target."""
  while min(pil.size) >= 2 * target_short:
    pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=Image.Resampling.BOX)
  return pil


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
  """Resizes so that min(H, W) == `short`, keeping the aspect ratio (box pre-halving + bicubic)."""
  h, w = image.shape[:2]
  if min(h, w) == short:
    return image
  pil = _box_halve(Image.fromarray(image), short)
  scale = short / min(pil.size)
  new_w = max(short, round(pil.size[0] * scale))
  new_h = max(short, round(pil.size[1] * scale))
  pil = pil.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
  return np.asarray(pil)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes a (square) crop to size x size with bicubic resampling."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  pil = Image.fromarray(image).resize((size, size), resample=Image.Resampling.BICUBIC)
  return np.asarray(pil)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ADM centre crop: short side -> `size` (bicubic), then the centre size x size window."""
  image = ensure_rgb_array(image)
  if image.shape[0] == size and image.shape[1] == size:
    return image
  image = resize_short_side(image, size)
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def random_resized_crop(image: np.ndarray, size: int, max_scale: float,
                        rng: np.random.Generator) -> np.ndarray:
  """ADM random crop: short side -> random L in [size, round(size * max_scale)], random window.

  Draws, in this order: L, the top offset, the left offset. Deterministic given `rng`'s state.
  """
  image = ensure_rgb_array(image)
  short = int(rng.integers(size, round(size * max_scale) + 1))
  image = resize_short_side(image, short)
  h, w = image.shape[:2]
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Flips left-right with probability 0.5 (one draw from `rng`)."""
  if rng.random() < 0.5:
    return np.ascontiguousarray(image[:, ::-1])
  return image


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def square_crop_box(h: int, w: int, side: int, top: int, left: int) -> tuple[int, int, int, int]:
  """Clips a square crop to the image; returns (top, left, bottom, right)."""
  side = max(1, min(side, h, w))
  top = min(max(0, top), h - side)
  left = min(max(0, left), w - side)
  return top, left, top + side, left + side
