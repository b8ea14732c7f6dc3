"""LlamaGen-style class-conditional GPT over tokenizer codes (docs/spec.md §4.1, layout section 2).

Sequence: [class embedding, tok(z_0), ..., tok(z_{T-2})] at positions 0..T-1 -> logits for z_0..z_{T-1}.
Pre-norm blocks without biases:  h = x + Attn(RMSNorm(x));  out = h + SwiGLU(RMSNorm(h)).
Position: a learned absolute embedding (T + 1 rows, the 1D-tokenizer GPT) or 2D RoPE on the
sqrt(T) x sqrt(T) grid (LlamaGen's 2D GPT, whose class position gets an all-zero rotation table).

Parameter names and shapes hold the reference state dict one to one (`tok_embeddings`,
`cls_embedding`, `positional_embedding`, `layers.{i}.attention.wqkv/wo`,
`layers.{i}.feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`, `norm`, `output`); the fused qkv
is stored (embed, 3, heads, head_dim), i.e. the torch (3D, D) weight transposed and reshaped.

Decoding uses a KV cache: `init_cache` + `decode(...)` process new positions at `pos` (any number
with a one-chunk cache; with a chunked cache, positions inside one chunk) and return the updated
cache; a full forward and a token-by-token decode give the same logits.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gigatok_jax.models.layers import (KeyGen, RMSNorm, SwiGLU, dropout, flat_matmul, param,
                                       run_layers, zeros)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
normal_02 = nnx.initializers.normal(stddev=0.02)

# One layer's cache: (key chunks, value chunks), each chunk (B, heads, chunk_len, head_dim); the
# chunks hold consecutive positions. Heads before positions: the score and value contractions of
# a decode step then batch over the leading (B, heads) dims and read the cache where it lies. With
# (B, max_len, heads, head_dim), XLA:CPU copied both caches of every layer into that order at every
# step: GPT-B at 16 rows spent ~10 of a layer's 12 ms in those copies. Chunks let a decode step
# read only the chunks filled so far (`decode(..., chunk=c)` reads chunks 0..c): a slice of one
# array would be copied, or fused into a slow dot, at every step.
LayerCache = tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]


def ffn_hidden(width: int, multiple_of: int = 256) -> int:
  """SwiGLU width: int(2 * 4d / 3) rounded up to a multiple of 256 (LLaMA / LlamaGen)."""
  hidden = int(2 * 4 * width / 3)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def rope_2d_table(num_tokens: int, head_dim: int, base: float = 10000.0,
                  cls_tokens: int = 1) -> jax.Array:
  """(cls_tokens + num_tokens, head_dim // 2, 2) [cos, sin] table of LlamaGen's 2D RoPE.

  The first head_dim / 4 feature pairs rotate with the row index, the rest with the column index;
  the class position(s) get zeros (as in the reference, which zeroes q and k there).
  """
  grid = math.isqrt(num_tokens)
  if grid * grid != num_tokens:
    raise ValueError(f"2D RoPE needs a square number of tokens, got {num_tokens}")
  half = head_dim // 2
  freqs = 1.0 / (base ** (jnp.arange(0, half, 2)[: half // 2].astype(jnp.float32) / half))
  t = jnp.outer(jnp.arange(grid, dtype=jnp.float32), freqs)            # (g, half/2)
  angles = jnp.concatenate([jnp.broadcast_to(t[:, None, :], (grid, grid, half // 2)),
                            jnp.broadcast_to(t[None, :, :], (grid, grid, half // 2))], -1)
  table = jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1).reshape(num_tokens, half, 2)
  return jnp.concatenate([jnp.zeros((cls_tokens, half, 2), jnp.float32), table])


def apply_rope(x: jax.Array, table: jax.Array) -> jax.Array:
  """x (B, T, H, D) with interleaved feature pairs; table (T, D/2, 2) -> rotated x."""
  b, t, h, d = x.shape
  xs = x.astype(jnp.float32).reshape(b, t, h, d // 2, 2)
  cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
  out = jnp.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], -1)
  return out.reshape(b, t, h, d).astype(x.dtype)


def _attend(q, ks, vs, visible) -> jax.Array:
  """Heads-major q (B, H, T, D); ks and vs: sequences of (B, H, S_c, D) chunks that together hold
  the S key positions (one chunk outside cached decoding); visible (T, S) -> (B, T, H, D).

  The arithmetic of `jax.nn.dot_product_attention` (float32 scores and softmax), written with
  heads before positions so that both contractions batch over the leading (B, H) dims: XLA:CPU
  then reads k and v where they lie instead of copying them into that order (GPT-B at batch 4 x
  256 tokens, forward + backward of the core: 48 -> 40 ms per layer on the 2-core CPU). Chunks
  are contracted one by one; their scores share one softmax."""
  dt, d = q.dtype, q.shape[-1]
  scores = jnp.concatenate([jnp.einsum("bhtd,bhsd->bhts", q, kc, preferred_element_type=jnp.float32)
                            for kc in ks], -1) / jnp.sqrt(jnp.float32(d))
  probs = jax.nn.softmax(jnp.where(visible, scores, jnp.finfo(jnp.float32).min), axis=-1)
  probs = probs.astype(dt)
  ends = np.cumsum([vc.shape[2] for vc in vs])
  parts = [jnp.einsum("bhts,bhsd->bhtd", probs[..., end - vc.shape[2]:end], vc)
           for vc, end in zip(vs, ends)]
  return functools.reduce(operator.add, parts).transpose(0, 2, 1, 3)


def _heads_major(x: jax.Array) -> jax.Array:
  return x.transpose(0, 2, 1, 3)                                          # (B, T, H, D) <-> (B, H, T, D)


ATTENTION = ("auto", "einsum", "xla")


def attention_core(choice: str) -> str:
  """`model.attention` -> 'einsum' or 'xla': 'auto' is 'einsum' on the CPU backend (where it beats
  jax.nn's XLA path: see `_attend`), 'xla' elsewhere."""
  if choice == "auto":
    return "einsum" if jax.default_backend() == "cpu" else "xla"
  return choice


def _causal_attention(q, k, v, core: str = "einsum") -> jax.Array:
  """q, k, v (B, T, H, D) -> causal self-attention (B, T, H, D): `_attend` ('einsum') or
  jax.nn.dot_product_attention ('xla'; on GPUs it picks cuDNN's fused kernel when it can)."""
  if core == "xla":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)
  t = q.shape[1]
  causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]               # (T, S)
  return _attend(_heads_major(q), (_heads_major(k),), (_heads_major(v),), causal)


def _cached_attention(q, k, v, cache: LayerCache, pos, chunk: int) -> tuple[jax.Array, LayerCache]:
  """q, k, v (B, T, H, D) at positions pos..pos+T-1, all inside cache chunk `chunk` (static) ->
  (output (B, T, H, D), updated cache): `_attend` against chunks 0..chunk, positions after
  pos+T-1 masked out; later chunks are neither read nor written."""
  ks, vs = list(cache[0]), list(cache[1])
  size, t = ks[0].shape[2], q.shape[1]                                    # positions per chunk
  if isinstance(pos, int) and not chunk * size <= pos <= pos + t <= (chunk + 1) * size:
    # dynamic_update_slice would clamp the offset and overwrite other positions without a word.
    raise ValueError(f"positions {pos}..{pos + t - 1} are not inside cache chunk {chunk} "
                     f"(positions {chunk * size}..{(chunk + 1) * size - 1})")
  at = (0, 0, pos - chunk * size, 0)
  ks[chunk] = jax.lax.dynamic_update_slice(ks[chunk], _heads_major(k).astype(ks[chunk].dtype), at)
  vs[chunk] = jax.lax.dynamic_update_slice(vs[chunk], _heads_major(v).astype(vs[chunk].dtype), at)
  s = (chunk + 1) * size
  visible = jnp.arange(s)[None, :] <= (pos + jnp.arange(t))[:, None]     # (T, S)
  read = lambda chunks: tuple(c.astype(q.dtype) for c in chunks[:chunk + 1])  # noqa: E731
  return (_attend(_heads_major(q), read(ks), read(vs), visible),
          (tuple(ks), tuple(vs)))


def chunk_size(max_len: int, chunks: int) -> int:
  """Positions per chunk of a KV cache of `max_len` positions in `chunks` chunks (the last chunk
  may hold unused positions)."""
  return -(-max_len // chunks)


class CausalSelfAttention(nnx.Module):
  def __init__(self, width: int, heads: int, *, rngs, dtype, param_dtype, attention="auto"):
    if width % heads:
      raise ValueError(f"GPT: width {width} not divisible by {heads} heads")
    if attention not in ATTENTION:
      raise ValueError(f"GPT: model.attention must be one of {ATTENTION}, got {attention!r}")
    self.heads, self.head_dim, self.dtype = heads, width // heads, dtype
    self.core = attention
    self.wqkv = param(rngs, normal_02, (width, 3, heads, self.head_dim),
                      ("embed", None, "heads", "head_dim"), param_dtype)
    self.wo = param(rngs, normal_02, (heads, self.head_dim, width),
                    ("heads", "head_dim", "embed"), param_dtype)

  def __call__(self, x: jax.Array, rope: jax.Array | None, cache: LayerCache | None = None,
               pos: jax.Array | int = 0, chunk: int = 0) -> tuple[jax.Array, LayerCache | None]:
    # x (B, T, W); rope (T, head_dim/2, 2) for these positions or None; pos: first position of x;
    # chunk: the cache chunk that holds those positions.
    dt = self.dtype
    b, t, w = x.shape
    qkv = flat_matmul(x.astype(dt), self.wqkv[...].astype(dt).reshape(w, -1))  # (B, T, 3HD)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.heads, self.head_dim), 2, 0)
    if rope is not None:
      q, k = apply_rope(q, rope), apply_rope(k, rope)
    if cache is None:
      o = _causal_attention(q, k, v, attention_core(self.core))          # (B, T, H, D)
    else:
      o, cache = _cached_attention(q, k, v, cache, pos, chunk)
    return flat_matmul(o.reshape(b, t, -1), self.wo[...].astype(dt).reshape(-1, w)), cache


class Block(nnx.Module):
  def __init__(self, width: int, heads: int, hidden: int, *, rngs, dtype, param_dtype, eps,
               resid_dropout: float, ffn_dropout: float, attention: str = "auto"):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.attention_norm = RMSNorm(width, eps=eps, **kw)
    self.attention = CausalSelfAttention(width, heads, attention=attention, **kw)
    self.ffn_norm = RMSNorm(width, eps=eps, **kw)
    self.feed_forward = SwiGLU(width, hidden, kernel_init=normal_02, **kw)
    self.resid_dropout, self.ffn_dropout = resid_dropout, ffn_dropout

  def __call__(self, x, rope, key=None, cache=None, pos=0, chunk=0):
    keys = (None, None) if key is None else tuple(jax.random.split(key))
    a, cache = self.attention(self.attention_norm(x), rope, cache, pos, chunk)
    h = x + dropout(a, self.resid_dropout, keys[0])
    return h + dropout(self.feed_forward(self.ffn_norm(h)), self.ffn_dropout, keys[1]), cache


class GPT(nnx.Module):
  """Class-conditional decoder-only transformer; `cfg` is a recipe's `model` group (config/gpt.py)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    rngs = KeyGen(rngs)
    dtype, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    w = cfg.width
    self.cfg = cfg
    self.dtype = dtype
    self.num_tokens, self.num_classes = cfg.num_tokens, cfg.num_classes
    self.tok_embeddings = param(rngs, normal_02, (cfg.vocab_size, w), ("vocab", "embed"), pdt)
    # Row num_classes is the null class of classifier-free guidance.
    self.cls_embedding = param(rngs, normal_02, (cfg.num_classes + 1, w), ("classes", "embed"), pdt)
    if cfg.position == "learned_1d":
      self.positional_embedding = param(rngs, normal_02, (cfg.num_tokens + 1, w),
                                        ("position", "embed"), pdt)
    elif cfg.position != "rope_2d":
      raise ValueError(f"unknown GPT position {cfg.position!r} (expected 'learned_1d' or 'rope_2d')")
    hidden = ffn_hidden(w)
    self.layers = nnx.List([
        Block(w, cfg.heads, hidden, rngs=rngs, dtype=dtype, param_dtype=pdt, eps=cfg.norm_eps,
              resid_dropout=cfg.resid_dropout, ffn_dropout=cfg.ffn_dropout,
              attention=cfg.get("attention", "auto"))
        for _ in range(cfg.layers)])
    self.norm = RMSNorm(w, eps=cfg.norm_eps, rngs=rngs, dtype=dtype, param_dtype=pdt)
    self.output = param(rngs, zeros, (w, cfg.vocab_size), ("embed", "vocab"), pdt)

  # --- pieces ------------------------------------------------------------------------------------
  def _rope(self, pos, length: int) -> jax.Array | None:
    if self.cfg.position != "rope_2d":
      return None
    table = rope_2d_table(self.num_tokens, self.cfg.width // self.cfg.heads, self.cfg.rope_base)
    table = jnp.concatenate([table, jnp.zeros((1,) + table.shape[1:], table.dtype)])  # pos T: unused
    return jax.lax.dynamic_slice_in_dim(table, pos, length)

  def embed(self, labels: jax.Array | None, tokens: jax.Array | None) -> jax.Array:
    """[class embedding (if labels)] + token embeddings -> (B, T, W) in the compute dtype."""
    parts = []
    if labels is not None:
      parts.append(jnp.take(self.cls_embedding[...], labels, axis=0)[:, None, :])
    if tokens is not None:
      parts.append(jnp.take(self.tok_embeddings[...], tokens, axis=0))
    return jnp.concatenate(parts, axis=1).astype(self.dtype)

  def _run(self, x: jax.Array, pos, key, caches, stop_after: int | None = None, chunk: int = 0):
    """Positions + blocks + final norm + head: x (B, T, W) at positions pos.. -> logits (B, T, V).

    `stop_after=k` returns the hidden state (B, T, W) after block k instead (linear probing).
    """
    t = x.shape[1]
    if self.cfg.position == "learned_1d":
      x = x + jax.lax.dynamic_slice_in_dim(self.positional_embedding[...], pos, t).astype(x.dtype)
    rope = self._rope(pos, t)
    n = len(self.layers)
    keys = None if key is None else jax.random.split(key, n + 1)          # (L + 1,) keys
    x = dropout(x, self.cfg.token_dropout, None if keys is None else keys[-1])
    new_caches = None
    if caches is None:                     # teacher-forced pass: the blocks, remat, maybe scanned
      depth = n if stop_after is None else stop_after
      x, _ = run_layers(list(self.layers)[:depth], lambda l, h, *k: l(h, rope, *k)[0], x,
                        remat=self.cfg.remat, scan=self.cfg.get("scan_layers", False),
                        per_layer=() if keys is None else (keys[:depth],))
      if stop_after is not None:
        return x, None
    else:                                  # cached decoding, one block at a time
      new_caches = []
      for layer, cache in zip(self.layers, caches):
        x, cache = layer(x, rope, None, cache, pos, chunk)
        new_caches.append(cache)
    h = self.norm(x)
    logits = flat_matmul(h, self.output[...].astype(self.dtype))             # (B, T, V)
    return logits.astype(jnp.float32), new_caches

  def drop_labels(self, labels: jax.Array, key: jax.Array) -> jax.Array:
    """Class dropout for CFG training: each label becomes the null class with p = class_dropout."""
    drop = jax.random.bernoulli(key, self.cfg.class_dropout, labels.shape)
    return jnp.where(drop, self.num_classes, labels)

  # --- public API ----------------------------------------------------------------------------------
  def __call__(self, tokens: jax.Array, labels: jax.Array, *, dropout_key: jax.Array | None = None,
               return_hidden_at: int | None = None) -> jax.Array:
    """Teacher-forced logits (B, T, V) float32 for targets `tokens` (B, T) given class `labels` (B,).

    `dropout_key` turns on training behaviour (class, token, residual and FFN dropout).
    """
    if dropout_key is not None:
      label_key, dropout_key = jax.random.split(dropout_key)
      labels = self.drop_labels(labels, label_key)
    x = self.embed(labels, tokens[:, :-1])                      # (B, T, W)
    return self._run(x, 0, dropout_key, None)[0]

  def hidden_states(self, tokens: jax.Array, labels: jax.Array, layer: int) -> jax.Array:
    """(B, T, W) hidden state after block `layer` (1-based) of the teacher-forced pass, no dropout.

    Linear probing (docs/spec.md §4.5) uses layer n_layer // 2 with the null class as `labels`.
    """
    if not 1 <= layer <= len(self.layers):
      raise ValueError(f"layer must be in [1, {len(self.layers)}], got {layer}")
    return self._run(self.embed(labels, tokens[:, :-1]), 0, None, None, stop_after=layer)[0]

  def init_cache(self, batch: int, max_len: int | None = None, dtype=None,
                 chunks: int = 1) -> list[LayerCache]:
    """Zeroed KV cache for `max_len` positions (default: class token + all image tokens but the
    last), split into `chunks` chunks of ceil(max_len / chunks) positions each."""
    max_len = max_len or self.num_tokens
    h, d = self.cfg.heads, self.cfg.width // self.cfg.heads
    shape = (batch, h, chunk_size(max_len, chunks), d)
    dtype = dtype or self.dtype
    zeros_ = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(chunks))  # noqa: E731
    return [(zeros_(), zeros_()) for _ in self.layers]

  def decode(self, x: jax.Array, caches: list[LayerCache], pos,
             chunk: int = 0) -> tuple[jax.Array, list[LayerCache]]:
    """Embedded inputs x (B, t, W) at positions pos..pos+t-1 -> (logits (B, t, V), updated caches).

    Position 0 is the class token (`embed(labels, None)`); position i > 0 is token z_{i-1}. The t
    positions must lie in cache chunk `chunk` (static; 0 for a one-chunk cache); chunks after it
    are not read.
    """
    return self._run(x, pos, None, caches, chunk=chunk)


def count_params(model_state: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(model_state))
