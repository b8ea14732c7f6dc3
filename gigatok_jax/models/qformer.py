"""Transformer halves of the tokenizer (docs/spec.md §2.1, layouts 1.3 / 1.5).

1D (Q-Former): the encoder turns the 16 x 16 CNN map ("memory") into 256 latent tokens whose
queries start from multi-level average pooling of the memory; the decoder turns the 256 quantized
tokens ("memory") back into a 16 x 16 map whose queries all start as the first token plus a learned
2D position embedding. 2D (ViT): tokens stay on the grid.

All layers are pre-norm "DETR decoder" layers (self-attention, cross-attention to a fixed memory,
MLP). Position embeddings go to queries and keys, never to values:
    t += SA(q = k = LN1(t) + qp, v = LN1(t))
    t += CA(q = LN2(t) + qp, k = m + mp, v = m)
    t += MLP(LN3(t))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from gigatok_jax.models.layers import (Attention, Conv, Dense, LayerNorm, Mlp, param, run_layers,
                                       stack_modules)


class QFormerLayer(nnx.Module):
  def __init__(self, width: int, heads: int, mlp_ratio: float, *, rngs, dtype, param_dtype,
               cross_attention: bool = True):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = LayerNorm(width, **kw)
    self.self_attn = Attention(width, heads, **kw)
    self.norm2 = LayerNorm(width, **kw) if cross_attention else None
    self.multihead_attn = Attention(width, heads, **kw) if cross_attention else None
    self.norm3 = LayerNorm(width, **kw)
    self.mlp = Mlp(width, int(width * mlp_ratio), **kw)

  def __call__(self, t, qp, memory=None, mp=None):
    # t (B, Tq, W); qp (Tq, W); memory (B, Tm, W); mp (Tm, W)
    h = self.norm1(t)
    t = t + self.self_attn(h + qp, h + qp, h)
    if self.multihead_attn is not None:
      h = self.norm2(t)
      t = t + self.multihead_attn(h + qp, memory + mp, memory)
    return t + self.mlp(self.norm3(t))


def _pool_groups(h: int, w: int, full: bool = False):
  """(rows, cols) of the pooling groups after the global token: 1x1, 1x2, 2x2, 2x4, ... while a
  group has at most h*w/2 regions, then (`full=True`) h x w, the grid itself (shared by
  `multi_level_pool` and `multi_level_unpool`)."""
  rows, cols = 1, 1
  while rows * cols * 2 <= h * w:
    yield rows, cols
    if cols == rows:
      cols *= 2
    else:
      rows *= 2
  if full:
    yield h, w


def max_latent_tokens(h: int, w: int) -> int:
  """The most query tokens multi-level pooling of an h x w grid gives: 1 + 1 + 2 + ... + h*w."""
  return 1 + sum(r * c for r, c in _pool_groups(h, w, full=True))


def _check_count(h: int, w: int, n: int) -> None:
  if not 1 <= n <= max_latent_tokens(h, w):
    raise ValueError(f"{n} latent tokens: an {h} x {w} grid pools into 1 to "
                     f"{max_latent_tokens(h, w)}")


def _pool_regions(h: int, w: int, n: int):
  """The first n pooling regions in coarse-to-fine order, as (top, left, height, width) cells.

  The series is the global mean, then the groups of `_pool_groups` (regions row-major inside a
  group), ending with the grid's own cells: 1 + 1 + 2 + 4 + ... + h*w = 2*h*w regions at most.
  n = h*w (the reference) stops after the (h/2) x w group. A count that is not a sum of the series
  takes the first regions of the next group in row-major order (32 tokens of a 16 x 16 grid:
  1+1+2+4+8+16; 100 tokens of an 8 x 8 grid: the 64 of 1+...+32, then 36 of its 64 cells).
  """
  _check_count(h, w, n)
  regions = [(0, 0, h, w)]
  for rows, cols in _pool_groups(h, w, full=True):
    for r in range(rows):
      for c in range(cols):
        regions.append((r * (h // rows), c * (w // cols), h // rows, w // cols))
  return regions[:n]


def multi_level_pool(grid: jax.Array, num_tokens: int | None = None) -> jax.Array:
  """Coarse-to-fine average pooling of a (B, H, W, C) grid into `num_tokens` query tokens
  (default H*W; docs/spec.md §2.4; the regions and their order: `_pool_regions`).

  Groups (rows x cols): 1x1, 1x1 again, 1x2, 2x2, 2x4, 4x4, ... up to (H/2) x W; the column count
  grows first, each group is flattened row-major, groups are concatenated coarse to fine.
  For 16 x 16 that is 1+1+2+4+8+16+32+64+128 = 256 tokens.
  """
  b, h, w, c = grid.shape
  n = h * w if num_tokens is None else num_tokens
  _check_count(h, w, n)
  groups = [grid.mean(axis=(1, 2))[:, None, :]]
  start = 1
  for rows, cols in _pool_groups(h, w, full=True):
    if start >= n:
      break
    take = min(rows * cols, n - start)
    pooled = grid.reshape(b, rows, h // rows, cols, w // cols, c).mean(axis=(2, 4))
    groups.append(pooled.reshape(b, rows * cols, c)[:, :take])
    start += take
  out = jnp.concatenate(groups, axis=1)
  assert out.shape[1] == n, (out.shape, n)
  return out


@functools.lru_cache(maxsize=None)
def unpool_matrix(h: int, w: int, n: int | None = None) -> np.ndarray:
  """(h*w, n) float32 U (n default h*w): U[cell, token] = 1/k where `token`'s pooling region
  (`_pool_regions`) contains grid cell `cell` (row-major) and k regions of the n contain it.
  Built once per shape (cached, read-only): every trace of the decoder asks for it."""
  n = h * w if n is None else n
  cover = np.zeros((h, w, n), np.float32)
  for t, (top, left, rh, rw) in enumerate(_pool_regions(h, w, n)):
    cover[top:top + rh, left:left + rw, t] = 1.0
  cover = cover.reshape(h * w, n)
  u = cover / cover.sum(axis=1, keepdims=True)
  u.setflags(write=False)
  return u


def multi_level_unpool(tokens: jax.Array, h: int, w: int) -> jax.Array:
  """The mirror of `multi_level_pool`: (B, N, C) tokens in its coarse-to-fine order -> (B, h, w, C).

  Each grid cell gets the mean of the tokens whose pooling region contains it (one per group), so
  that a decoder query starts from the tokens that describe its place. Computed as one matmul with
  the constant `unpool_matrix`: written with slices and repeats instead, XLA:CPU fused the backward
  pass (pads of every slice plus the repeats' reductions) into one loop fusion that recomputed the
  reductions per element and took 7% of the demo's train step.
  """
  b, n, c = tokens.shape
  u = jnp.asarray(unpool_matrix(h, w, n), tokens.dtype)
  # HIGHEST: TPUs would otherwise multiply float32 in bfloat16 passes; the mean should be exact.
  out = jnp.einsum("pn,bnc->bpc", u, tokens, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, h, w, c)


def _pos_embed(rngs, n: int, width: int, param_dtype) -> nnx.Param:
  scale = width ** -0.5
  return param(rngs, lambda k, s, d: scale * jax.random.normal(k, s, d), (n, width),
               ("position", "embed"), param_dtype)


class _Stack(nnx.Module):
  """Layers plus the optional semantic-branch tap after layer `distill_depth` (1-indexed)."""

  def __init__(self, width, layers, heads, mlp_ratio, *, rngs, dtype, param_dtype,
               cross_attention=True, remat="none", scan=False):
    stack = [QFormerLayer(width, heads, mlp_ratio, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                          cross_attention=cross_attention) for _ in range(layers)]
    # Unrolled: `transformer.{i}.*` (the reference's names); scanned: `layers.*` with a leading
    # depth axis (layer_layout.py converts between the two).
    if scan:
      self.layers = stack_modules(stack)
    else:
      self.transformer = nnx.List(stack)
    self.scan = scan
    self.remat = remat

  def run(self, t, qp, memory=None, mp=None, tap_depth: int = 0, self_memory: bool = False):
    """t (B, T, W) through the layers -> (t, t after layer `tap_depth` or None).

    `self_memory=True`: each layer's input is also its cross-attention memory (2D 'decoder' type).
    """
    if self_memory:
      fn = lambda layer, h: layer(h, qp, h, qp)
    else:
      fn = lambda layer, h: layer(h, qp, memory, mp)
    return run_layers(self.layers if self.scan else self.transformer, fn, t, remat=self.remat,
                      tap_depth=tap_depth)


class QFormerEncoder(nnx.Module):
  """(B, h, w, z) CNN map -> (B, N, z) latent tokens (N = num_tokens, default h*w)."""

  def __init__(self, *, grid: int, z_channels: int, width: int, layers: int, heads: int,
               mlp_ratio: float, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat="none", scan_layers=False, num_tokens: int | None = None):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.num_tokens = grid * grid if num_tokens is None else num_tokens
    self.positional_embedding = _pos_embed(rngs, grid * grid, width, param_dtype)     # memory keys
    self.latent_token_positional_embedding = _pos_embed(rngs, self.num_tokens, width,
                                                        param_dtype)                   # queries
    self.ln_pre = LayerNorm(z_channels, **kw)
    self.encoder_embed = Dense(z_channels, width, axes=("z_channels", "embed"), **kw)
    self.global_proj = Dense(width, width, axes=("embed", "mlp"), **kw)
    self.stack = _Stack(width, layers, heads, mlp_ratio, remat=remat, scan=scan_layers, **kw)
    self.ln_post = LayerNorm(width, **kw)
    self.conv_out = Dense(width, z_channels, axes=("embed", "z_channels"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    memory = self.encoder_embed(self.ln_pre(x.reshape(b, h * w, c)))        # (B, hw, W)
    queries = self.global_proj(multi_level_pool(memory.reshape(b, h, w, -1),
                                                self.num_tokens))                  # (B, N, W)
    t, _ = self.stack.run(queries, self.latent_token_positional_embedding[...].astype(queries.dtype),
                          memory, self.positional_embedding[...].astype(memory.dtype))
    return self.conv_out(self.ln_post(t))                                      # (B, N, z)


class QFormerDecoder(nnx.Module):
  """(B, N, z) quantized tokens -> (B, h, w, z) map, plus the projected layer-k features."""

  def __init__(self, *, grid: int, num_tokens: int, z_channels: int, width: int, layers: int,
               heads: int, mlp_ratio: float, distill_depth: int, distill_dim: int, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32, remat="none", scan_layers=False,
               query_init: str = "first_token"):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    if query_init not in ("first_token", "unpool"):
      raise ValueError(f"query_init must be 'first_token' or 'unpool', got {query_init!r}")
    self.grid = grid
    self.query_init = query_init
    self.distill_depth = distill_depth
    self.positional_embedding = _pos_embed(rngs, grid * grid, width, param_dtype)          # queries
    self.latent_token_positional_embedding = _pos_embed(rngs, num_tokens, width, param_dtype)  # memory
    self.ln_pre = LayerNorm(z_channels, **kw)
    self.decoder_embed = Dense(z_channels, width, axes=("z_channels", "embed"), **kw)
    self.stack = _Stack(width, layers, heads, mlp_ratio, remat=remat, scan=scan_layers, **kw)
    self.ln_post = LayerNorm(width, **kw)
    self.conv_out = Conv(width, z_channels, 3, padding=1, axes=("embed", "z_channels"), **kw)
    self.distill_mlp = SemanticProjector(width, distill_dim, **kw)

  def __call__(self, tokens: jax.Array, with_distill: bool = False):
    b = tokens.shape[0]
    memory = self.decoder_embed(self.ln_pre(tokens))                      # (B, N, W)
    if self.query_init == "unpool":  # each cell starts from the tokens pooled over its place
      queries = multi_level_unpool(memory, self.grid, self.grid).reshape(b, -1, memory.shape[-1])
    else:                            # the reference: every query starts as the first token
      queries = jnp.broadcast_to(memory[:, :1], (b, self.grid * self.grid, memory.shape[-1]))
    t, tapped = self.stack.run(
        queries, self.positional_embedding[...].astype(memory.dtype), memory,
        self.latent_token_positional_embedding[...].astype(memory.dtype),
        tap_depth=self.distill_depth if with_distill else 0)
    out = self.conv_out(self.ln_post(t).reshape(b, self.grid, self.grid, -1))
    distill = self.distill_mlp(tapped) if with_distill else None         # (B, hw, distill_dim)
    return out, distill


class SemanticProjector(nnx.Module):
  """REPA-style projector: Linear(W, 4W) -> SiLU -> Linear(4W, 4W) -> SiLU -> Linear(4W, D)."""

  def __init__(self, width: int, out_dim: int, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc1 = Dense(width, 4 * width, axes=("embed", "mlp"), **kw)
    self.fc2 = Dense(4 * width, 4 * width, axes=("mlp", "embed"), **kw)
    self.fc3 = Dense(4 * width, out_dim, axes=("embed", "teacher_embed"), **kw)

  def __call__(self, x):
    return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(x)))))


class ViTEncoder2D(nnx.Module):
  """2D variant: a transformer over the grid tokens, grid kept (docs/spec.md §2.3 "2D variants").

  `layer_type='plain'`: pre-norm self-attention + MLP, position embedding added once.
  `layer_type='decoder'`: the Q-Former layer with the layer's own input as memory, the one position
  embedding used as both qp and mp (the SS_2d reference default).
  """

  def __init__(self, *, grid: int, z_channels: int, width: int, layers: int, heads: int,
               mlp_ratio: float, layer_type: str, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, remat="none", scan_layers=False, out_kernel: int = 1):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.grid = grid
    self.layer_type = layer_type
    self.positional_embedding = _pos_embed(rngs, grid * grid, width, param_dtype)
    self.ln_pre = LayerNorm(z_channels, **kw)
    self.embed = Dense(z_channels, width, axes=("z_channels", "embed"), **kw)
    self.stack = _Stack(width, layers, heads, mlp_ratio, remat=remat, scan=scan_layers,
                        cross_attention=(layer_type == "decoder"), **kw)
    self.ln_post = LayerNorm(width, **kw)
    self.conv_out = Conv(width, z_channels, out_kernel, padding=out_kernel // 2,
                         axes=("embed", "z_channels"), **kw)

  def features(self, x, tap_depth=0):
    b, h, w, c = x.shape
    t = self.embed(self.ln_pre(x.reshape(b, h * w, c)))
    pos = self.positional_embedding[...].astype(t.dtype)
    if self.layer_type == "plain":
      return self.stack.run(t + pos, jnp.zeros_like(pos), tap_depth=tap_depth)
    return self.stack.run(t, pos, tap_depth=tap_depth, self_memory=True)


  def __call__(self, x):
    b, h, w, _ = x.shape
    t, _ = self.features(x)
    return self.conv_out(self.ln_post(t).reshape(b, h, w, -1))


class ViTDecoder2D(ViTEncoder2D):
  """2D decoder: same trunk as the 2D encoder, a 3x3 conv out and the semantic projector."""

  def __init__(self, *, distill_depth: int, distill_dim: int, **kwargs):
    super().__init__(out_kernel=3, **kwargs)
    self.distill_depth = distill_depth
    self.distill_mlp = SemanticProjector(kwargs["width"], distill_dim, rngs=kwargs["rngs"],
                                         dtype=kwargs.get("dtype", jnp.float32),
                                         param_dtype=kwargs.get("param_dtype", jnp.float32))

  def __call__(self, x, with_distill: bool = False):
    b, h, w, _ = x.shape
    t, tapped = self.features(x, self.distill_depth if with_distill else 0)
    out = self.conv_out(self.ln_post(t).reshape(b, h, w, -1))
    return out, (self.distill_mlp(tapped) if with_distill else None)
