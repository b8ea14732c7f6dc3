"""l2-normalised vector quantizer with rotation trick and entropy loss (docs/spec.md §2.5).

All quantizer math runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gigatok_jax.models.layers import param


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
    sim = jnp.dot(z, e.T, precision=jax.lax.Precision.HIGHEST)    # (M, K)
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
