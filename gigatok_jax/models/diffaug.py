"""Differentiable augmentation in front of the DINO discriminator (translation, colour, cutout).

The official dino-disc loss augments every image the discriminator sees (generator and
discriminator passes, real and fake) with probability 1 and cutout ratio 0.2. Per image, seven
uniform draws r0..r6 in [0, 1) decide (H, W the image size):
  - translation by (t_h, t_w), t = floor(r (2 d + 1)) - d with d = round(0.125 H) (resp. W); pixels
    shifted in from outside are 0;
  - brightness x += r2 - 0.5; saturation x = (x - m_c) * 2 r3 + m_c with m_c the per-pixel channel
    mean; contrast x = (x - m) * (r4 + 0.5) + m with m the image mean;
  - cutout: a c_h x c_w zero rectangle (c = round(0.2 H)) centred at floor(r5 (H + 1 - c_h % 2)),
    floor(r6 (W + 1 - c_w % 2)), clipped to the image.
`augment(x, draws)` takes the draws explicitly (the parity test feeds the torch reference the same
ones); `random_augment(x, key)` draws them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TRANSLATION = 0.125
CUTOUT = 0.2


def augment(images: jax.Array, draws: jax.Array) -> jax.Array:
  """images (B, H, W, C) float, draws (7, B) in [0, 1) -> augmented (B, H, W, C) float32."""
  x = images.astype(jnp.float32)
  b, h, w, _ = x.shape
  r = draws.astype(jnp.float32)
  # translation: out[i, j] = x[i + t_h, j + t_w], 0 outside (the official clamps its indices into a
  # 1-pixel zero border, which reads 0 for every outside pixel too). One slice per image of a copy
  # padded by the largest shift: no gather across the batch, so the batch stays sharded.
  dh, dw = round(h * TRANSLATION), round(w * TRANSLATION)
  t_h = jnp.floor(r[0] * (2 * dh + 1)).astype(jnp.int32) - dh              # (B,)
  t_w = jnp.floor(r[1] * (2 * dw + 1)).astype(jnp.int32) - dw
  padded = jnp.pad(x, ((0, 0), (dh, dh), (dw, dw), (0, 0)))
  x = jax.vmap(lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, img.shape[-1])))(
      padded, t_h + dh, t_w + dw)
  # colour
  x = x + (r[2] - 0.5)[:, None, None, None]
  m = x.mean(axis=-1, keepdims=True)
  x = (x - m) * (2 * r[3])[:, None, None, None] + m
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - m) * (r[4] + 0.5)[:, None, None, None] + m
  # cutout
  ch, cw = round(h * CUTOUT), round(w * CUTOUT)
  top = jnp.floor(r[5] * (h + 1 - ch % 2)).astype(jnp.int32) - ch // 2    # (B,)
  left = jnp.floor(r[6] * (w + 1 - cw % 2)).astype(jnp.int32) - cw // 2
  i, j = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
  in_rows = (i >= top[:, None]) & (i < top[:, None] + ch)                  # (B, H)
  in_cols = (j >= left[:, None]) & (j < left[:, None] + cw)                # (B, W)
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])                      # (B, H, W)
  return x * keep[..., None].astype(x.dtype)


def random_augment(images: jax.Array, key: jax.Array) -> jax.Array:
  """`augment` with draws from `key`."""
  return augment(images, jax.random.uniform(key, (7, images.shape[0])))
