"""LPIPS-VGG perceptual distance (v0.1), used as the tokenizer's perceptual loss.

Why our own module: the reference loss is the `lpips` package's `LPIPS(net='vgg', version='0.1')`
on top of torchvision's VGG16; neither runs under JAX, and the loss must live inside the jitted,
sharded train step. Semantics follow docs/checkpoint_layouts.md section 4:

  x' = (x - shift) / scale                      scaling layer, constants (not parameters)
  VGG16 `features`: 13 3x3 convs (padding 1) + ReLU, 2x2/2 max pools between the 5 blocks,
  tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the last ReLU of each block)
  f_hat = f / (sqrt(sum_c f^2) + 1e-10)         unit length over channels, per pixel
  d_k = mean_hw( lin_k((f_hat(x) - f_hat(y))^2) ),   lin_k: 1x1 conv C_k -> 1, no bias
  LPIPS(x, y) = sum_k d_k                       (B,)

Inputs are NHWC images in [-1, 1] (lpips `normalize=False`). The trunk runs in `dtype` (bfloat16
in training); the normalisation, heads and means run in float32. x and y go through VGG as one
batch of 2B images (one set of conv launches instead of two), interleaved per pair so that
a batch-sharded input needs no data movement.

The parameters are ordinary `nnx.Param`s (so the converter can load them strictly): the caller
keeps this module out of the optimizer (LPIPS is frozen, as in the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.models.layers import Conv, KeyGen, zeros

# VGG16 ("D") conv widths per block; a 2x2 max pool precedes every block but the first.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(b[-1] for b in BLOCKS)   # (64, 128, 256, 512, 512)
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

# lpips ScalingLayer buffers (float32, shape (3,) here; (1, 3, 1, 1) in torch).
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10  # lpips.normalize_tensor


def torchvision_conv_indices() -> tuple[int, ...]:
  """Index of each conv in torchvision's `vgg16().features` (conv, ReLU pairs; pools between).

  -> (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28); pools sit at 4, 9, 16, 23 (and 30, unused).
  """
  out, idx = [], 0
  for b, widths in enumerate(BLOCKS):
    if b:
      idx += 1          # max pool
    for _ in widths:
      out.append(idx)
      idx += 2          # conv, ReLU
  return tuple(out)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """torch MaxPool2d(2, 2) on NHWC: (B, H, W, C) -> (B, H // 2, W // 2, C), odd edges dropped."""
  # A Python -inf (concrete) selects reduce_window_max, which has a gradient rule.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max,
                               (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def unit_channels(f: jax.Array) -> jax.Array:
  """f / (sqrt(sum_c f^2) + 1e-10) over the last axis, in float32.

  The squared norm is clamped at float32's smallest normal before the sqrt: the forward value is
  unchanged (sqrt(tiny) ~ 1e-19 vanishes against 1e-10 in float32), but sqrt's derivative stays
  finite where a pixel's features are all zero (or underflow), so no NaN reaches the gradient.
  """
  f = f.astype(jnp.float32)
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)              # (B, H, W, 1)
  norm = jnp.sqrt(jnp.maximum(sq, np.finfo(np.float32).tiny))
  return f / (norm + EPS)


class LPIPS(nnx.Module):
  """LPIPS v0.1 with the VGG16 trunk: `model(x, y)` -> (B,) distances for NHWC images in [-1, 1].

  Parameters: `convs.{j}.kernel` (3, 3, Cin, Cout) and `.bias` (Cout,) for the 13 VGG convs in
  order; `heads.{k}.kernel` (1, 1, C_k, 1) for the 5 linear heads. Load trained weights with
  `gigatok_jax.convert.lpips.load_lpips`; the random init only gives a sane, unlearned distance.
  """

  def __init__(self, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    rngs = KeyGen(rngs)
    self.dtype = dtype
    # torchvision's VGG init: kaiming normal (fan_out, ReLU gain), zero bias.
    kaiming = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    convs, cin = [], 3
    for widths in BLOCKS:
      for cout in widths:
        convs.append(Conv(cin, cout, 3, rngs=rngs, padding=1, kernel_init=kaiming, bias_init=zeros,
                          axes=("conv_in", "conv_out"), dtype=dtype, param_dtype=param_dtype))
        cin = cout
    self.convs = nnx.List(convs)
    # Heads: 1x1 convs C -> 1 without bias, run in float32. Init 1/C: the channel mean of d.
    self.heads = nnx.List([
        Conv(c, 1, 1, rngs=rngs, padding="VALID", use_bias=False,
             kernel_init=nnx.initializers.constant(1.0 / c), axes=("conv_in", None),
             dtype=jnp.float32, param_dtype=param_dtype)
        for c in TAP_CHANNELS])

  def scale_inputs(self, x: jax.Array) -> jax.Array:
    """lpips ScalingLayer: (x - shift) / scale per RGB channel, in float32. (B, H, W, 3)."""
    return (x.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)

  def features(self, x: jax.Array) -> list[jax.Array]:
    """VGG16 trunk on already-scaled images -> [relu1_2, ..., relu5_3] in the compute dtype.

    (B, H, W, 3) -> (B, H, W, 64), (B, H/2, W/2, 128), (B, H/4, W/4, 256), (B, H/8, W/8, 512),
    (B, H/16, W/16, 512) (floor division at each pool).
    """
    h = x.astype(self.dtype)
    taps, j = [], 0
    for b, widths in enumerate(BLOCKS):
      if b:
        h = max_pool_2x2(h)
      for _ in widths:
        h = jax.nn.relu(self.convs[j](h))
        j += 1
      taps.append(h)
    return taps

  def per_layer(self, x: jax.Array, y: jax.Array) -> list[jax.Array]:
    """The five per-layer distances d_k, each (B,) float32; their sum is the LPIPS distance."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"LPIPS: expected two NHWC RGB batches of one shape, got {x.shape}, "
                       f"{y.shape}")
    b = x.shape[0]
    # One batch of 2B images, interleaved x0, y0, x1, y1, ...: with the batch sharded over devices
    # each device keeps its own x and y rows (a plain [x; y] would move data between devices).
    xy = jnp.stack([x.astype(jnp.float32), y.astype(jnp.float32)], axis=1)   # (B, 2, H, W, 3)
    xy = xy.reshape((2 * b,) + x.shape[1:])                                   # (2B, H, W, 3)
    out = []
    for f, head in zip(self.features(self.scale_inputs(xy)), self.heads):
      f_hat = unit_channels(f).reshape((b, 2) + f.shape[1:])       # (B, 2, h, w, C) float32
      d = jnp.square(f_hat[:, 0] - f_hat[:, 1])                    # (B, h, w, C)
      out.append(jnp.mean(head(d)[..., 0], axis=(1, 2)))           # (B, h, w, 1) -> (B,)
    return out

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """x, y (B, H, W, 3) in [-1, 1] -> (B,) float32 LPIPS distances."""
    return sum(self.per_layer(x, y))
