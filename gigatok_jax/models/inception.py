"""The FID InceptionV3 (2015-12-05 TF weights) under JAX, with the front ends of both protocols.

One network, two ways to feed it (`eval.protocol`, docs/evaluation.md):
  - 'adm': what OpenAI's ADM evaluator computes with the TF graph `classify_image_graph_def.pb`:
    images in [0, 255] -> TF-1 `ResizeBilinear` to 299 (align_corners=False, no half-pixel
    centres: source = destination x in/out) -> (x - 128) / 128. Features: `pool_3` (2048) and
    `mixed_6/conv` (the ReLU output of Mixed_6d's 1x1 branch, (17, 17, 192)), of which sFID keeps
    channels 0..6, flattened row-major with the channel fastest (2023).
  - 'pytorch_fid': pytorch-fid's wrapper: [0, 1] images -> torch bilinear resize (half-pixel
    centres) -> 2x - 1. Same trunk and weights.
The graph's own softmax logits are pool3 @ W with the bias added; ADM and torch-fidelity compute the
Inception Score from softmax(pool3 @ W) without it, so `measure` returns the unbiased logits.

Why our own module: the reference FID network is pytorch-fid's `FIDInceptionA/C/E_1/E_2` variant of
torchvision's `Inception3` (num_classes=1008, aux_logits=False); neither runs under JAX, and the
evaluation should run inside our jitted, sharded loop. Facts from
docs/checkpoint_layouts.md section 5:

  input (B, H, W, 3) in [-1, 1] -> bilinear resize to 299 x 299 (torch align_corners=False,
  no antialiasing) -> stem -> Mixed_5b..5d (A) -> 6a (B) -> 6b..6e (C) -> 7a (D) -> 7b (E_1),
  7c (E_2) -> global average (pool3, 2048) -> fc (1008 logits)

  BasicConv = conv without bias + BatchNorm (running statistics, eps 1e-3) + ReLU.
  FID-specific pool branches: A, C, E_1 use a 3x3/s1/p1 average pool with
  count_include_pad=False (border windows divide by the number of real pixels); E_2 (Mixed_7c)
  uses a 3x3/s1/p1 max pool. Stem, B and D pools are 3x3/s2 VALID max pools.

Input convention: pytorch-fid's wrapper takes [0, 1] images, resizes, then maps 2x - 1. Ours takes
[-1, 1] images and resizes them directly: bilinear weights sum to 1, so resize(2x - 1) =
2 resize(x) - 1 and `ours(2 * x01 - 1) == wrapper(x01)` (up to float rounding).

Names mirror the torch keys: torch `Mixed_6b.branch7x7_2.conv.weight` (O, I, kH, kW) is our
`Mixed_6b.branch7x7_2.conv.kernel` (kH, kW, I, O); `...bn.{weight, bias, running_mean,
running_var}` are our `...bn.{scale, bias, mean, var}`; `fc.weight` (1008, 2048) is `fc.kernel`
(2048, 1008). All of them, running statistics included, are ordinary `nnx.Param`s: the network is
frozen (inference only), and one variable type lets the converter load every tensor strictly with
`weight_files.assign_flat`. The caller keeps this module out of any optimizer.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.models.layers import KeyGen, ones, param, zeros

MODEL_NAME = "fid_inception_v3"   # the "model" entry of a converted file's metadata
INPUT_SIZE = 299                  # pytorch-fid resizes every input to 299 x 299
BN_EPS = 1e-3                     # torchvision BasicConv2d's BatchNorm2d(eps=0.001)
NUM_FEATURES = 2048               # pool3
NUM_CLASSES = 1008                # the 2015-12-05 graph's 1008-way classifier (1000 + 8 unused)

# torchvision's Inception3 init: truncated normal, std 0.1, for convs and fc; BN scale 1, bias 0.
# The random init only gives an unlearned network; load real weights with the converter.
_TRUNC_01 = nnx.initializers.truncated_normal(stddev=0.1)


PROTOCOLS = ("adm", "pytorch_fid")
SPATIAL_CHANNELS = 7              # ADM's sFID keeps mixed_6/conv[..., :7]
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS   # 2023


class InceptionOutput(NamedTuple):
  pool: jax.Array     # (B, 2048) float32: pool3 features (the FID statistics are taken on these)
  logits: jax.Array   # (B, 1008) float32: fc(pool3) with the bias (pytorch-fid's classifier)


class Measurements(NamedTuple):
  """What the evaluation protocols take from one batch (`FIDInception.measure`)."""
  pool: jax.Array     # (B, 2048) float32: pool_3 (FID, precision/recall)
  spatial: jax.Array  # (B, 2023) float32: mixed_6/conv[..., :7] flattened (h, w, c) (sFID)
  logits: jax.Array   # (B, 1008) float32: pool3 @ W, no bias (Inception Score)


# ------------------------------------------------------------------------------------------------
# pooling and resizing
# ------------------------------------------------------------------------------------------------
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch MaxPool2d(3, stride=2) (VALID): (B, H, W, C) -> (B, (H - 3) // 2 + 1, ..., C)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def max_pool_3x3_same(x: jax.Array) -> jax.Array:
  """torch F.max_pool2d(x, 3, stride=1, padding=1): the implicit padding is -inf. Shape kept."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), pad)


def avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """torch F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False). Shape kept.

  The window sum is divided by the number of in-image pixels of each window (9 inside, 6 on an
  edge, 4 in a corner): the count is a (1, H, W, 1) constant, folded at compile time. Summed in
  float32.
  """
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  x32 = x.astype(jnp.float32)
  total = jax.lax.reduce_window(x32, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  count = jax.lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32), 0.0,
                                jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return (total / count).astype(x.dtype)


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """torch F.interpolate(mode='bilinear', align_corners=False, antialias=False) on NHWC, float32.

  (B, H, W, C) -> (B, size, size, C). jax.image.resize with antialias=False samples at half-pixel
  centres with a unit-width triangle kernel and renormalises at the borders, which is torch's
  clamped source coordinate; checked against torch to 5e-7 for 256, 512, 64 and 37 -> 299 (the
  test repeats 256 and 512). The explicit antialias=False matters when downsampling: jax's default
  (True) widens the kernel, torch's bilinear does not.
  """
  b, h, w, c = images.shape
  x = images.astype(jnp.float32)
  if (h, w) == (size, size):
    return x                       # torch's align_corners=False same-size resize is the identity
  return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=False)


def resize_bilinear_tf1(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """TF-1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False) on NHWC, float32.

  (B, H, W, C) -> (B, size, size, C). Output pixel i reads the source at i * (in / out) (a float32
  product, as TF's legacy scaler), between floor and min(ceil, in - 1), and interpolates as TF's
  kernel does: top = tl + (tr - tl) * dx; bottom likewise; out = top + (bottom - top) * dy. The
  indices and weights are numpy constants computed at trace time. Unlike torch's resize this one
  samples from the top-left corner, which shifts the image by half a source pixel.
  """
  b, h, w, c = images.shape
  x = images.astype(jnp.float32)
  ylo, yhi, dy = _tf1_axis(h, size)
  xlo, xhi, dx = _tf1_axis(w, size)
  top, bottom = x[:, ylo], x[:, yhi]                                     # (B, size, W, C)
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]
  top = top[:, :, xlo] + (top[:, :, xhi] - top[:, :, xlo]) * dx          # (B, size, size, C)
  bottom = bottom[:, :, xlo] + (bottom[:, :, xhi] - bottom[:, :, xlo]) * dx
  return top + (bottom - top) * dy


def _tf1_axis(in_size: int, out_size: int):
  """(lower index, upper index, fraction) per output position of TF-1's legacy bilinear scaler."""
  scale = np.float32(in_size) / np.float32(out_size)
  position = np.arange(out_size, dtype=np.float32) * scale               # float32, as TF
  lower = np.floor(position)
  upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int32)
  return lower.astype(np.int32), upper, (position - lower).astype(np.float32)


def protocol_inputs(images: jax.Array, protocol: str) -> jax.Array:
  """(B, H, W, 3) pixel values in [0, 255] -> (B, 299, 299, 3) network inputs of `protocol`."""
  x = images.astype(jnp.float32)
  if protocol == "adm":
    return (resize_bilinear_tf1(x) - 128.0) / 128.0     # the graph's Sub(128), Mul(1/128)
  if protocol == "pytorch_fid":
    return resize_bilinear(x / 127.5 - 1.0)
  raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvNoBias(nnx.Module):
  """Conv2d without bias on NHWC input, kernel (kH, kW, Cin, Cout); kernels may be asymmetric
  ((1, 7), (7, 1), (1, 3), (3, 1)) with their own (pad_h, pad_w)."""

  def __init__(self, cin: int, cout: int, kernel_size, *, rngs: KeyGen, stride: int = 1,
               padding=0, dtype=jnp.float32, param_dtype=jnp.float32):
    kh, kw = _pair(kernel_size)
    ph, pw = _pair(padding)
    self.dtype = dtype
    self.stride = stride
    self.padding = ((ph, ph), (pw, pw))
    self.kernel = param(rngs, _TRUNC_01, (kh, kw, cin, cout),
                        (None, None, "conv_in", "conv_out"), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, Cin) -> (B, H', W', Cout)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)   # full float32 on TPU/GPU too, as the TF graph


class FrozenBatchNorm(nnx.Module):
  """Inference BatchNorm: (x - mean) * rsqrt(var + 1e-3) * scale + bias per channel, in float32.

  `mean` / `var` are torch's running statistics, held as Params (see the module docstring).
  """

  def __init__(self, channels: int, *, rngs: KeyGen, param_dtype=jnp.float32):
    self.scale = param(rngs, ones, (channels,), ("norm",), param_dtype)
    self.bias = param(rngs, zeros, (channels,), ("norm",), param_dtype)
    self.mean = param(rngs, zeros, (channels,), ("norm",), param_dtype)
    self.var = param(rngs, ones, (channels,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    f32 = lambda v: v[...].astype(jnp.float32)  # noqa: E731
    mult = jax.lax.rsqrt(f32(self.var) + BN_EPS) * f32(self.scale)             # (C,)
    return ((x.astype(jnp.float32) - f32(self.mean)) * mult + f32(self.bias)).astype(x.dtype)


class BasicConv(nnx.Module):
  """torchvision BasicConv2d: relu(bn(conv(x))), keys `conv.*` and `bn.*`."""

  def __init__(self, cin: int, cout: int, kernel_size, *, rngs: KeyGen, stride: int = 1,
               padding=0, dtype=jnp.float32, param_dtype=jnp.float32):
    self.conv = ConvNoBias(cin, cout, kernel_size, rngs=rngs, stride=stride, padding=padding,
                           dtype=dtype, param_dtype=param_dtype)
    self.bn = FrozenBatchNorm(cout, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


# ------------------------------------------------------------------------------------------------
# blocks (attribute names = torchvision's, so they are the torch key prefixes)
# ------------------------------------------------------------------------------------------------
class InceptionA(nnx.Module):
  """Mixed_5b/5c/5d (35x35): [1x1 64, 5x5 64, 3x3dbl 96, pool pool_features] (FIDInceptionA:
  average pool excluding padding). Cout = 224 + pool_features."""

  def __init__(self, cin: int, pool_features: int, **kw):
    self.branch1x1 = BasicConv(cin, 64, 1, **kw)
    self.branch5x5_1 = BasicConv(cin, 48, 1, **kw)
    self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, **kw)
    self.branch_pool = BasicConv(cin, pool_features, 1, **kw)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a (35 -> 17): [3x3/s2 384, 3x3dbl 96 (last /s2), max pool 3/2 (Cin)]. Cout = 480+Cin."""

  def __init__(self, cin: int, **kw):
    self.branch3x3 = BasicConv(cin, 384, 3, stride=2, **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, **kw)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b..6e (17x17): [1x1 192, 7x7 192, 7x7dbl 192, pool 192] = 768, factorised 7x7 convs
  of width c7 (FIDInceptionC: average pool excluding padding)."""

  def __init__(self, cin: int, c7: int, **kw):
    row = dict(padding=(0, 3), **kw)   # (1, 7)
    col = dict(padding=(3, 0), **kw)   # (7, 1)
    self.branch1x1 = BasicConv(cin, 192, 1, **kw)
    self.branch7x7_1 = BasicConv(cin, c7, 1, **kw)
    self.branch7x7_2 = BasicConv(c7, c7, (1, 7), **row)
    self.branch7x7_3 = BasicConv(c7, 192, (7, 1), **col)
    self.branch7x7dbl_1 = BasicConv(cin, c7, 1, **kw)
    self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), **col)
    self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), **row)
    self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), **col)
    self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), **row)
    self.branch_pool = BasicConv(cin, 192, 1, **kw)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5):
      bd = conv(bd)
    bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a (17 -> 8): [3x3 320 (/s2), 7x7x3 192 (last 3x3 /s2), max pool 3/2 (Cin)].
  Cout = 512 + Cin."""

  def __init__(self, cin: int, **kw):
    self.branch3x3_1 = BasicConv(cin, 192, 1, **kw)
    self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, **kw)
    self.branch7x7x3_1 = BasicConv(cin, 192, 1, **kw)
    self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), **kw)
    self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), **kw)
    self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, **kw)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = conv(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b / 7c (8x8): [1x1 320, cat(3x3_2a, 3x3_2b) 768, cat(3x3dbl_3a, 3x3dbl_3b) 768,
  pool 192] = 2048. pool='avg' is FIDInceptionE_1 (average excluding padding, Mixed_7b),
  pool='max' is FIDInceptionE_2 (3x3/s1/p1 max pool, Mixed_7c)."""

  def __init__(self, cin: int, pool: str, **kw):
    if pool not in ("avg", "max"):
      raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv(cin, 320, 1, **kw)
    self.branch3x3_1 = BasicConv(cin, 384, 1, **kw)
    self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), **kw)
    self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), **kw)
    self.branch3x3dbl_1 = BasicConv(cin, 448, 1, **kw)
    self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, **kw)
    self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), **kw)
    self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), **kw)
    self.branch_pool = BasicConv(cin, 192, 1, **kw)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = avg_pool_3x3_exclude_pad(x) if self.pool == "avg" else max_pool_3x3_same(x)
    return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class _Linear(nnx.Module):
  """y = x @ kernel + bias in float32, kernel (in, out) (torch Linear weight transposed)."""

  def __init__(self, fin: int, fout: int, *, rngs: KeyGen, param_dtype=jnp.float32):
    self.kernel = param(rngs, _TRUNC_01, (fin, fout), ("conv_in", "conv_out"), param_dtype)
    self.bias = param(rngs, zeros, (fout,), ("conv_out",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return (jnp.dot(x.astype(jnp.float32), self.kernel[...].astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
            + self.bias[...].astype(jnp.float32))


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
class FIDInception(nnx.Module):
  """pytorch-fid's FID InceptionV3: `model(images)` -> InceptionOutput(pool (B, 2048),
  logits (B, 1008)), both float32, for NHWC images in [-1, 1] of any size (resized to 299).

  The trunk runs in `dtype` (float32 by default; FID statistics should be taken in float32);
  resizing, BatchNorm, pool averages, the global mean and fc run in float32. Load the real
  weights with `gigatok_jax.convert.inception.load`.
  """

  def __init__(self, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    rngs = KeyGen(rngs)
    self.dtype = dtype
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    # stem (299 input): 149 -> 147 -> 147 -> pool 73 -> 73 -> 71 -> pool 35
    self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, **kw)
    self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, **kw)
    self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, **kw)
    self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, **kw)
    self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, **kw)
    self.Mixed_5b = InceptionA(192, pool_features=32, **kw)    # -> 256 @ 35
    self.Mixed_5c = InceptionA(256, pool_features=64, **kw)    # -> 288
    self.Mixed_5d = InceptionA(288, pool_features=64, **kw)    # -> 288
    self.Mixed_6a = InceptionB(288, **kw)                      # -> 768 @ 17
    self.Mixed_6b = InceptionC(768, c7=128, **kw)              # -> 768
    self.Mixed_6c = InceptionC(768, c7=160, **kw)
    self.Mixed_6d = InceptionC(768, c7=160, **kw)
    self.Mixed_6e = InceptionC(768, c7=192, **kw)
    self.Mixed_7a = InceptionD(768, **kw)                      # -> 1280 @ 8
    self.Mixed_7b = InceptionE(1280, pool="avg", **kw)         # -> 2048 (FIDInceptionE_1)
    self.Mixed_7c = InceptionE(2048, pool="max", **kw)         # -> 2048 (FIDInceptionE_2)
    # fc 2048 -> 1008 with bias, in float32 (torchvision's Linear; TF's softmax layer).
    self.fc = _Linear(NUM_FEATURES, NUM_CLASSES, rngs=rngs, param_dtype=param_dtype)

  def features(self, x: jax.Array) -> jax.Array:
    """The trunk on already-resized [-1, 1] images: (B, 299, 299, 3) -> (B, 8, 8, 2048)."""
    return self._trunk(x)[0]

  def _trunk(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, 299, 299, 3) -> ((B, 8, 8, 2048), mixed_6/conv (B, 17, 17, 192))."""
    h = x.astype(self.dtype)
    h = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(h)))   # (B, 147, 147, 64)
    h = max_pool_3x3_s2(h)                                               # (B, 73, 73, 64)
    h = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(h))                        # (B, 71, 71, 192)
    h = max_pool_3x3_s2(h)                                               # (B, 35, 35, 192)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c):
      h = block(h)
    # The TF graph's `mixed_6/conv` is the ReLU of Mixed_6d's 1x1 branch (torch-fidelity's weight
    # map pairs `mixed_6/conv/*` with `Mixed_6d.branch1x1.*`); XLA shares it with the block's own.
    mixed_6_conv = self.Mixed_6d.branch1x1(h)                            # (B, 17, 17, 192)
    for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      h = block(h)
    return h, mixed_6_conv

  def __call__(self, images: jax.Array) -> InceptionOutput:
    """images (B, H, W, 3) in [-1, 1] -> pool3 (B, 2048) and logits (B, 1008), float32."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"FIDInception: expected NHWC RGB images, got shape {images.shape}")
    x = resize_bilinear(images)                                          # (B, 299, 299, 3)
    h = self.features(x)                                                 # (B, 8, 8, 2048)
    pool = jnp.mean(h.astype(jnp.float32), axis=(1, 2))                  # (B, 2048)
    return InceptionOutput(pool=pool, logits=self.fc(pool))

  def measure(self, images: jax.Array, protocol: str = "adm") -> Measurements:
    """images (B, H, W, 3) with pixel values in [0, 255] (uint8 or float) -> Measurements.

    `protocol` picks the front end (module docstring); the trunk and weights are the same.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"FIDInception: expected NHWC RGB images, got shape {images.shape}")
    h, mixed_6_conv = self._trunk(protocol_inputs(images, protocol))
    pool = jnp.mean(h.astype(jnp.float32), axis=(1, 2))                  # (B, 2048)
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].astype(jnp.float32)   # (B, 17, 17, 7)
    logits = jnp.dot(pool, self.fc.kernel[...].astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)                # (B, 1008), no bias
    return Measurements(pool=pool, spatial=spatial.reshape(spatial.shape[0], -1), logits=logits)
