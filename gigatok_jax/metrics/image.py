"""Per-image PSNR and SSIM on uint8 NHWC batches, matching skimage.metrics as GigaTok's evaluation uses it.

Both metrics work on the uint8 scale (data range 255): float inputs are taken as [-1, 1] and quantised to uint8
first, as happens when reconstructions are saved as images and then scored (numpy/scipy). `psnr_float` is
the train step's jax metric on unquantised floats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from gigatok_jax.images import to_uint8

# An exact match has MSE 0 and infinite PSNR. We floor the MSE at 1e-10 instead, so identical images score PSNR_CAP_DB ~ 148.13 dB and batch means stay finite. The cap is
# above every real value: one grey level off in one pixel of a 1024x1024x3 image is still only ~113 dB.
PSNR_MSE_FLOOR = 1e-10
PSNR_CAP_DB = float(10 * np.log10(255.0 ** 2 / PSNR_MSE_FLOOR))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Two (N, H, W, C) or (H, W, C) batches -> float64 (N, H, W, C) on the uint8 scale."""
  a, b = to_uint8(a), to_uint8(b)
  if a.shape != b.shape:
    raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
  if a.ndim == 3:
    a, b = a[None], b[None]
  if a.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got {a.shape}")
  return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N,) PSNR in dB per image, data range 255; identical images give PSNR_CAP_DB (see above)."""
  a, b = _pair(a, b)
  mse = np.mean(np.square(a - b), axis=(1, 2, 3))  # (N,)
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, PSNR_MSE_FLOOR))


def ssim(a: np.ndarray, b: np.ndarray, *, gaussian_weights: bool = True, sigma: float = 1.5,
         win_size: int = 7, data_range: float = 255.0, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
  """(N,) mean SSIM per image (Wang et al. 2004), each channel separately, then averaged over channels.

  gaussian_weights=True (default) is the paper's setting: an 11x11 Gaussian window of std 1.5 (truncated at
  3.5 std) with population covariances; it equals skimage's structural_similarity(..., channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255).
  gaussian_weights=False is skimage's default instead: a `win_size` x `win_size` uniform window with sample
  covariances (N / (N - 1) correction). As in skimage, local statistics use reflected borders and the mean
  skips a border of half a window, where the filters see padding.
  """
  a, b = _pair(a, b)
  if gaussian_weights:
    truncate = 3.5
    window = 2 * int(truncate * sigma + 0.5) + 1  # 11 for sigma 1.5
    local_mean = lambda x: ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), truncate=truncate, mode="reflect")
    cov_norm = 1.0
  else:
    window = win_size
    local_mean = lambda x: ndimage.uniform_filter(x, size=(win_size, win_size, 1), mode="reflect")
    cov_norm = window ** 2 / (window ** 2 - 1.0)
  if min(a.shape[1:3]) < window:
    raise ValueError(f"images of {a.shape[1:3]} are smaller than the {window}x{window} SSIM window")
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  pad = (window - 1) // 2
  scores = np.empty(a.shape[0])
  for i, (x, y) in enumerate(zip(a, b)):  # one (H, W, C) image at a time keeps memory flat
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = cov_norm * (local_mean(x * x) - mean_x * mean_x)
    var_y = cov_norm * (local_mean(y * y) - mean_y * mean_y)
    cov_xy = cov_norm * (local_mean(x * y) - mean_x * mean_y)
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator  # (H, W, C)
    scores[i] = ssim_map[pad:ssim_map.shape[0] - pad, pad:ssim_map.shape[1] - pad].mean()
  return scores


def psnr_float(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean PSNR in dB of float images in [-1, 1] (peak-to-peak 2), per image then averaged; jax,
  for the train step's metric (no uint8 quantisation, unlike `psnr`)."""
  mse = jnp.mean(jnp.square(jnp.clip(a, -1, 1) - jnp.clip(b, -1, 1)), axis=(1, 2, 3))
  return jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))
