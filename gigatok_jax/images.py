"""Image helpers every mode shares: [-1, 1] floats <-> uint8, grids, PNG files."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigatok_jax import fileio


def to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 passes through; float images in [-1, 1] -> round((x + 1) * 127.5) clipped to [0, 255]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
  return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, per_row: int = 8, pad: int = 2) -> np.ndarray:
  """uint8 (N, H, W, 3) images -> one uint8 grid image, row-major, white padding."""
  n, h, w, _ = images.shape
  cols = max(1, min(per_row, n))
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray, per_row: int = 8,
                    pad: int = 2) -> np.ndarray:
  """uint8 grid: each row pair is originals above their reconstructions. Inputs (N, H, W, 3) in [-1, 1]."""
  a, b = to_uint8(originals), to_uint8(reconstructions)
  n = a.shape[0]
  cols = min(per_row, n)
  blank = np.full_like(a[:1], 255)
  rows = []
  for start in range(0, n, cols):
    fill = [blank] * (cols - min(cols, n - start))
    rows += [a[start:start + cols], *fill, b[start:start + cols], *fill]
  return image_grid(np.concatenate(rows), per_row=cols, pad=pad)


def save_png(image: np.ndarray, path: str) -> str:
  """Writes a uint8 (H, W, 3) image as PNG (atomically); returns `path`."""
  with fileio.atomic_write(path, "wb") as f:
    Image.fromarray(image).save(f, format="PNG")
  return path
