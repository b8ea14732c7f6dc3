"""VQGAN-style CNN encoder and decoder of the GigaTok hybrid tokenizer (docs/spec.md §2.1, layouts 1.3).

Encoder: conv_in, per level `num_res_blocks` ResnetBlocks then a stride-2 downsample (except the
last level), two mid blocks, GroupNorm + swish + conv_out to `z_channels`. 256 px -> 16 x 16.
Decoder: conv_in, two mid blocks, levels deepest first, each starting with an AdaptiveGroupNorm
conditioned on the decoder input map, `num_res_blocks + 1` ResnetBlocks, then a depth-to-space x2
upsample (except the last level); GroupNorm + swish + conv_out to RGB in [-1, 1] space.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gigatok_jax.models.group_norm import group_norm
from gigatok_jax.models.layers import Conv, Dense, GroupNorm, remat_call


def run_blocks(blocks, x: jax.Array, remat: str) -> jax.Array:
  """Applies res blocks in order, each under the `model.remat` policy."""
  for block in blocks:
    x = remat_call(remat, lambda b, h: b(h), block, x)
  return x


class ResnetBlock(nnx.Module):
  """GN -> swish -> conv -> GN -> swish -> conv, plus a 1x1 shortcut when channels change."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype, param_dtype,
               norm_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = GroupNorm(cin, num_groups=norm_groups, **kw)
    self.conv1 = Conv(cin, cout, 3, padding=1, **kw)
    self.norm2 = GroupNorm(cout, num_groups=norm_groups, **kw)
    self.conv2 = Conv(cout, cout, 3, padding=1, **kw)
    self.nin_shortcut = Conv(cin, cout, 1, padding=0, **kw) if cin != cout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(self.norm1(x, swish=True))
    h = self.conv2(self.norm2(h, swish=True))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


class EncoderLevel(nnx.Module):
  def __init__(self, cin: int, cout: int, num_blocks: int, downsample: bool, *, rngs, dtype,
               param_dtype, remat: str = "none", norm_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.remat = remat
    self.res = nnx.List([ResnetBlock(cin if j == 0 else cout, cout, norm_groups=norm_groups, **kw)
                         for j in range(num_blocks)])
    # Stride-2 3x3 conv; input padded by one row at the bottom and one column at the right.
    self.downsample = (Conv(cout, cout, 3, stride=2, padding=((0, 1), (0, 1)), **kw)
                       if downsample else None)

  def __call__(self, x):
    x = run_blocks(self.res, x, self.remat)
    return self.downsample(x) if self.downsample is not None else x


class CNNEncoder(nnx.Module):
  def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
               rngs: nnx.Rngs, in_channels: int = 3, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = "none", norm_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.remat = remat
    self.conv_in = Conv(in_channels, ch, 3, padding=1, **kw)
    levels, cin = [], ch
    for i, mult in enumerate(ch_mult):
      cout = ch * mult
      levels.append(EncoderLevel(cin, cout, num_res_blocks, i < len(ch_mult) - 1, remat=remat,
                                 norm_groups=norm_groups, **kw))
      cin = cout
    self.conv_blocks = nnx.List(levels)
    self.mid = nnx.List([ResnetBlock(cin, cin, norm_groups=norm_groups, **kw) for _ in range(2)])
    self.norm_out = GroupNorm(cin, num_groups=norm_groups, **kw)
    self.conv_out = Conv(cin, z_channels, 3, padding=1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, 3) -> (B, H/f, W/f, z_channels)
    h = self.conv_in(x)
    for level in self.conv_blocks:
      h = level(h)
    h = run_blocks(self.mid, h, self.remat)
    return self.conv_out(self.norm_out(h, swish=True))


def depth_to_space(x: jax.Array) -> jax.Array:
  """(B, H, W, 4C) -> (B, 2H, 2W, C), DCR order: out[2h+i, 2w+j, c] = in[h, w, (2i+j)*C + c].

  This is the TF/ONNX order the reference uses, not torch.pixel_shuffle's CRD order.
  """
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c)


class DepthToSpaceUpsample(nnx.Module):
  def __init__(self, channels: int, *, rngs, dtype, param_dtype):
    self.conv1 = Conv(channels, 4 * channels, 3, padding=1, rngs=rngs, dtype=dtype,
                      param_dtype=param_dtype)

  def __call__(self, x):
    return depth_to_space(self.conv1(x))


class AdaptiveGroupNorm(nnx.Module):
  """GN without affine, scaled/shifted by linear maps of the condition map's per-channel std/mean.

  The std is computed from torch's unbiased variance (N - 1) plus eps 1e-6, as the reference does.
  """

  def __init__(self, z_channels: int, channels: int, *, rngs, dtype, param_dtype,
               num_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, axes=("z_channels", "conv_out"))
    self.gamma = Dense(z_channels, channels, **kw)
    self.beta = Dense(z_channels, channels, **kw)
    self.eps = 1e-6
    self.num_groups = num_groups

  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    # x (B, H, W, C); cond (B, h, w, z_channels)
    c32 = cond.astype(jnp.float32)
    n = c32.shape[1] * c32.shape[2]
    mean = c32.mean(axis=(1, 2))                                         # (B, Z)
    var = jnp.square(c32 - mean[:, None, None]).sum(axis=(1, 2)) / (n - 1)
    std = jnp.sqrt(var + self.eps)
    scale = self.gamma(std).astype(jnp.float32)                          # (B, C)
    shift = self.beta(mean).astype(jnp.float32)
    return group_norm(x, scale, shift, self.num_groups, 1e-6, False)


class DecoderLevel(nnx.Module):
  def __init__(self, cin: int, cout: int, num_blocks: int, upsample: bool, *, rngs, dtype,
               param_dtype, remat: str = "none", norm_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.remat = remat
    self.res = nnx.List([ResnetBlock(cin if j == 0 else cout, cout, norm_groups=norm_groups, **kw)
                         for j in range(num_blocks)])
    self.upsample = DepthToSpaceUpsample(cout, **kw) if upsample else None

  def __call__(self, x):
    x = run_blocks(self.res, x, self.remat)
    return self.upsample(x) if self.upsample is not None else x


class CNNDecoder(nnx.Module):
  def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
               rngs: nnx.Rngs, out_channels: int = 3, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = "none", norm_groups: int = 32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.remat = remat
    cin = ch * ch_mult[-1]
    self.conv_in = Conv(z_channels, cin, 3, padding=1, **kw)
    self.mid = nnx.List([ResnetBlock(cin, cin, norm_groups=norm_groups, **kw) for _ in range(2)])
    adaptive, levels = [], []
    for i, mult in enumerate(reversed(ch_mult)):
      cout = ch * mult
      adaptive.append(AdaptiveGroupNorm(z_channels, cin, num_groups=norm_groups, **kw))
      levels.append(DecoderLevel(cin, cout, num_res_blocks + 1, i < len(ch_mult) - 1,
                                 remat=remat, norm_groups=norm_groups, **kw))
      cin = cout
    self.adaptive = nnx.List(adaptive)
    self.conv_blocks = nnx.List(levels)
    self.norm_out = GroupNorm(cin, num_groups=norm_groups, **kw)
    self.conv_out = Conv(cin, out_channels, 3, padding=1, **kw)

  def __call__(self, z: jax.Array) -> jax.Array:  # (B, h, w, z_channels) -> (B, h*f, w*f, 3)
    h = run_blocks(self.mid, self.conv_in(z), self.remat)
    for adaptive, level in zip(self.adaptive, self.conv_blocks):
      h = level(adaptive(h, z))
    return self.conv_out(self.norm_out(h, swish=True))
