"""The tokenizer's quantizers, chosen by `model.quantizer` (`make_quantizer`):

- 'vq' (GigaTok, the default): l2-normalised vector quantizer with rotation trick and entropy
  loss (docs/spec.md §2.5).
- 'ibq' (Index Backpropagation Quantization, Shi et al. 2024): logits = z . codebook, the one-hot
  of the argmax passed straight through the softmax, so every codebook row gets a gradient at
  every step and large codebooks (2^18 entries) stay in use. docs/quantizers.md.
- 'fsq' (Finite Scalar Quantization, Mentzer et al. 2023): each latent channel bounded and
  rounded to one of `fsq_levels[i]` values; no codebook parameters, no auxiliary losses; a code
  is the mixed-radix number of the channel levels.

All three return `QuantizerOutput` and have `lookup(indices)`; all quantizer math runs in float32
whatever the compute dtype. The (tokens, codebook) similarity of 'vq' and 'ibq' is pinned to the
mesh axes of the logical 'codebook' axis (`codebook_sharding`), so a large codebook's distance
matmul, softmax and argmax run sharded over its rows.
"""

from __future__ import annotations

from typing import NamedTuple

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gigatok_jax.models.layers import param

QUANTIZERS = ("vq", "ibq", "fsq")

# PartitionSpec of (tokens, codebook) similarity matrices while a step is traced (None: none).
# Set by the trainers next to `block_output_sharding`; models stay free of mesh code.
_SIMILARITY_AXES: contextvars.ContextVar = contextvars.ContextVar(
    "gigatok_similarity_axes", default=None)


@contextlib.contextmanager
def codebook_sharding(spec: jax.sharding.PartitionSpec | None):
  """Within this context, (M tokens, K codes) similarities are constrained to `spec`, the
  logical ('batch', 'codebook') axes: rows over the data-parallel axes, codes over the
  codebook's (parallel.similarity_spec)."""
  token = _SIMILARITY_AXES.set(spec)
  try:
    yield
  finally:
    _SIMILARITY_AXES.reset(token)


def _constrain_similarity(sim: jax.Array) -> jax.Array:
  spec = _SIMILARITY_AXES.get()
  return sim if spec is None else jax.lax.with_sharding_constraint(sim, spec)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  # Matches torch.nn.functional.normalize: x / max(|x|, eps).
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class QuantizerOutput(NamedTuple):
  quantized: jax.Array      # (B, N, D) float32, forward value = normalised codeword
  indices: jax.Array        # (B, N) int32
  vq_loss: jax.Array        # mean((z_q - sg(z))^2), weight 1 in the generator loss
  commit_loss: jax.Array    # beta * mean((sg(z_q) - z)^2)
  entropy_loss: jax.Array   # H_sample - H_avg (multiply by the entropy ratio); 0 when not computed


def rotate_to(z: jax.Array, z_q: jax.Array) -> jax.Array:
  """Rotation trick: value z_q, gradient to z through the fixed map R (R z = z_q).

  With unit u = sg(z), q = sg(z_q), w = (u + q) / |u + q|:  R = I - 2 w w^T + 2 q u^T.
  Applied without materialising R: R z = z - 2 w (w.z) + 2 q (u.z). |z_q| / |z| = 1 for unit vectors.
  """
  u = jax.lax.stop_gradient(z)
  q = jax.lax.stop_gradient(z_q)
  w = l2_normalize(u + q)
  return (z - 2.0 * w * jnp.sum(w * z, -1, keepdims=True)
          + 2.0 * q * jnp.sum(u * z, -1, keepdims=True))


def entropy_loss(distances: jax.Array, temperature: float) -> jax.Array:
  """H_sample - H_avg over p = softmax(-d / T) (rewards confident codes and a spread codebook)."""
  logits = -distances / temperature                       # (M, K)
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  sample_entropy = -jnp.sum(p * logp, axis=-1).mean()
  avg_p = p.mean(axis=0)
  avg_entropy = -jnp.sum(avg_p * jnp.log(avg_p + 1e-5))
  return sample_entropy - avg_entropy


class VectorQuantizer(nnx.Module):
  def __init__(self, codebook_size: int, code_dim: int, *, rngs: nnx.Rngs, commitment: float = 0.25,
               rotation_trick: bool = True, entropy_temperature: float = 0.01,
               param_dtype=jnp.float32):
    self.codebook_size = codebook_size
    self.commitment = commitment
    self.rotation_trick = rotation_trick
    self.entropy_temperature = entropy_temperature
    k = codebook_size

    def init(key, shape, dtype):  # uniform(-1/K, 1/K) then l2-normalised, like the reference
      return l2_normalize(jax.random.uniform(key, shape, dtype, -1.0 / k, 1.0 / k))

    # Named `embedding` like the reference's `quantize.embedding.weight`.
    self.embedding = param(rngs, init, (codebook_size, code_dim), ("codebook", "code_dim"),
                           param_dtype)

  def codebook(self) -> jax.Array:
    return l2_normalize(self.embedding[...].astype(jnp.float32))

  def lookup(self, indices: jax.Array) -> jax.Array:
    """(...,) int -> (..., D) normalised codewords (the decoder input for given codes)."""
    return jnp.take(self.codebook(), indices, axis=0)

  def __call__(self, z: jax.Array, *, with_entropy: bool = False) -> QuantizerOutput:
    shape = z.shape                                               # (B, N, D)
    z = l2_normalize(z.astype(jnp.float32)).reshape(-1, shape[-1])  # (M, D)
    e = self.codebook()                                           # (K, D)
    # |z|^2 = |e|^2 = 1, so d = 2 - 2 z.e and argmin d = argmax z.e.
    sim = _constrain_similarity(
        jnp.dot(z, e.T, precision=jax.lax.Precision.HIGHEST))    # (M, K)
    indices = jnp.argmax(sim, axis=-1)
    z_q = jnp.take(e, indices, axis=0)
    vq = jnp.mean(jnp.square(z_q - jax.lax.stop_gradient(z)))
    commit = self.commitment * jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - z))
    ent = (entropy_loss(2.0 - 2.0 * sim, self.entropy_temperature) if with_entropy
           else jnp.zeros((), jnp.float32))
    if self.rotation_trick:
      out = rotate_to(z, z_q)
    else:
      out = z + jax.lax.stop_gradient(z_q - z)
    return QuantizerOutput(out.reshape(shape), indices.reshape(shape[:-1]).astype(jnp.int32),
                           vq, commit, ent)


class IndexBackpropQuantizer(nnx.Module):
  """IBQ. Forward: z_q = codebook[argmax(z . codebook)] (z and codebook not normalised).
  Backward: z_q = (onehot - sg(p) + p) @ codebook with p = softmax(z . codebook), so the gradient
  reaches z through p and every codebook row through p and the matmul (the paper's index
  backpropagation). Losses (paper §3): vq = |z_q - sg z|^2 through that straight-through map plus
  the double-quantization term |codebook[idx] - sg z|^2 (the selected rows alone), commit =
  beta |sg z_q - z|^2, entropy over softmax(logits / T)."""

  def __init__(self, codebook_size: int, code_dim: int, *, rngs: nnx.Rngs, commitment: float = 0.25,
               entropy_temperature: float = 0.01, param_dtype=jnp.float32):
    self.codebook_size = codebook_size
    self.commitment = commitment
    self.entropy_temperature = entropy_temperature
    k = codebook_size

    def init(key, shape, dtype):   # uniform(-1/K, 1/K), the usual VQ-GAN codebook init
      return jax.random.uniform(key, shape, dtype, -1.0 / k, 1.0 / k)

    self.embedding = param(rngs, init, (codebook_size, code_dim), ("codebook", "code_dim"),
                           param_dtype)

  def codebook(self) -> jax.Array:
    return self.embedding[...].astype(jnp.float32)

  def lookup(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codebook(), indices, axis=0)

  def __call__(self, z: jax.Array, *, with_entropy: bool = False) -> QuantizerOutput:
    shape = z.shape                                                # (B, N, D)
    z = z.astype(jnp.float32).reshape(-1, shape[-1])               # (M, D)
    e = self.codebook()                                            # (K, D)
    logits = _constrain_similarity(
        jnp.dot(z, e.T, precision=jax.lax.Precision.HIGHEST))     # (M, K)
    indices = jnp.argmax(logits, axis=-1)
    p = jax.nn.softmax(logits, axis=-1)
    hard = jax.nn.one_hot(indices, self.codebook_size, dtype=jnp.float32)
    onehot = _constrain_similarity(hard - jax.lax.stop_gradient(p) + p)   # value: the one-hot
    z_q = jnp.dot(onehot, e, precision=jax.lax.Precision.HIGHEST)        # (M, D) = e[indices]
    selected = jnp.take(e, indices, axis=0)
    sg_z = jax.lax.stop_gradient(z)
    vq = jnp.mean(jnp.square(z_q - sg_z)) + jnp.mean(jnp.square(selected - sg_z))
    commit = self.commitment * jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - z))
    ent = (entropy_loss(-logits, self.entropy_temperature) if with_entropy
           else jnp.zeros((), jnp.float32))
    return QuantizerOutput(z_q.reshape(shape), indices.reshape(shape[:-1]).astype(jnp.int32),
                           vq, commit, ent)


class FiniteScalarQuantizer(nnx.Module):
  """FSQ with levels (L_1 .. L_D), D = code_dim: channel i is bounded to (L_i - 1) / 2 * tanh
  (shifted by a half step for even L_i so that L_i integers fit), rounded with a straight-through
  gradient, and divided by L_i // 2 (values in [-1, 1]). Code = sum_i digit_i * prod_{j<i} L_j
  with digit_i in [0, L_i). No parameters, no auxiliary losses (all returned as 0)."""

  def __init__(self, levels, *, eps: float = 1e-3):
    self.levels = tuple(int(l) for l in levels)
    self.codebook_size = math.prod(self.levels)
    self.eps = eps

  def _arrays(self):
    levels = jnp.asarray(self.levels, jnp.float32)                       # (D,)
    radix = jnp.asarray([math.prod(self.levels[:i]) for i in range(len(self.levels))], jnp.int32)
    return levels, radix

  def _bound(self, z: jax.Array) -> jax.Array:
    levels, _ = self._arrays()
    half_l = (levels - 1.0) * (1.0 - self.eps) / 2.0
    offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    return jnp.tanh(z + shift) * half_l - offset

  def _digits_to_codes(self, digits: jax.Array) -> jax.Array:
    levels, _ = self._arrays()
    half = jnp.floor(levels / 2.0)
    return (digits.astype(jnp.float32) - half) / half

  def lookup(self, indices: jax.Array) -> jax.Array:
    """(...,) int codes -> (..., D) values in [-1, 1]."""
    levels, radix = self._arrays()
    digits = (indices[..., None] // radix) % levels.astype(jnp.int32)
    return self._digits_to_codes(digits)

  def __call__(self, z: jax.Array, *, with_entropy: bool = False) -> QuantizerOutput:
    del with_entropy                                             # FSQ has no entropy term
    levels, radix = self._arrays()
    bounded = self._bound(z.astype(jnp.float32))                 # (B, N, D)
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half = jnp.floor(levels / 2.0)
    quantized = rounded / half
    digits = jnp.round(jax.lax.stop_gradient(rounded) + half).astype(jnp.int32)
    indices = jnp.sum(digits * radix, axis=-1).astype(jnp.int32)
    zero = jnp.zeros((), jnp.float32)
    return QuantizerOutput(quantized, indices, zero, zero, zero)


def make_quantizer(cfg: ml_collections.ConfigDict, *, rngs, param_dtype):
  """The `model.quantizer` of a tokenizer config (checked by config/validate.py)."""
  kind = cfg.get("quantizer", "vq")
  if kind == "vq":
    return VectorQuantizer(cfg.codebook_size, cfg.code_dim, rngs=rngs, commitment=cfg.commitment,
                           rotation_trick=cfg.rotation_trick,
                           entropy_temperature=cfg.entropy_temperature, param_dtype=param_dtype)
  if kind == "ibq":
    return IndexBackpropQuantizer(cfg.codebook_size, cfg.code_dim, rngs=rngs,
                                  commitment=cfg.commitment,
                                  entropy_temperature=cfg.entropy_temperature,
                                  param_dtype=param_dtype)
  if kind == "fsq":
    return FiniteScalarQuantizer(cfg.fsq_levels)
  raise ValueError(f"unknown quantizer {kind!r}")


def codebook_usage(index_buffer: jax.Array, codebook_size: int) -> jax.Array:
  """Fraction of codewords that appear in a buffer of recent indices (-1 = empty slot)."""
  counts = jnp.zeros((codebook_size,), jnp.int32).at[index_buffer].add(
      (index_buffer >= 0).astype(jnp.int32), mode="drop")
  return jnp.mean(counts > 0)


def code_perplexity(indices: jax.Array, codebook_size: int) -> jax.Array:
  """exp(entropy) of the code histogram of one batch."""
  counts = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
