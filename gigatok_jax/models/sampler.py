"""Autoregressive sampling of image tokens: KV cache, CFG schedules, temperature, top-k, top-p (docs/spec.md §4.4).

`generate` runs the whole decode inside one traced function: a prefill of the class token, then
`lax.fori_loop`s over the image tokens (one per KV-cache chunk), each iteration feeding one token
through the cached model.
With guidance the batch is doubled: rows [0, B) carry the classes, rows [B, 2B) the null class,
and the logits of token i are  cond + (s_i - 1) * (cond - uncond)  (= uncond + s_i (cond - uncond)),
with s_i = scale ('constant') or 1 for the first `cfg_step_fraction` of the tokens ('step').
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gigatok_jax.models.gpt import GPT, chunk_size

CFG_SCHEDULES = ("constant", "step")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  cfg_scale: float = 1.0
  cfg_schedule: str = "constant"
  cfg_step_fraction: float = 0.18
  temperature: float = 1.0          # 0 = greedy (argmax)
  top_k: int = 0                    # 0 = off
  top_p: float = 1.0                # 1 = off

  @classmethod
  def from_config(cls, sample_cfg) -> "SamplingSettings":
    return cls(**{f.name: sample_cfg[f.name] for f in dataclasses.fields(cls)})

  def check(self) -> None:
    if self.cfg_schedule not in CFG_SCHEDULES:
      raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")
    if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"invalid sampling settings {self}")


def guidance_scale(settings: SamplingSettings, index: jax.Array, num_tokens: int) -> jax.Array:
  """The CFG scale applied to token `index` (0-based) of `num_tokens`."""
  if settings.cfg_schedule == "constant":
    return jnp.float32(settings.cfg_scale)
  first_guided = int(settings.cfg_step_fraction * num_tokens)
  return jnp.where(index < first_guided, 1.0, settings.cfg_scale).astype(jnp.float32)


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """logits (B, V) with everything outside the top-k / nucleus set to -inf."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(sorted_logits, -1)
    # Drop a token when the mass before it already reaches top_p (the most likely one always stays).
    before = jnp.cumsum(probs, -1) - probs
    drop_sorted = before >= top_p
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


def sample_token(logits: jax.Array, key: jax.Array, settings: SamplingSettings) -> jax.Array:
  """(B, V) float32 logits -> (B,) int32 tokens."""
  if settings.temperature == 0.0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
  return jax.random.categorical(key, logits, -1).astype(jnp.int32)


# KV-cache chunks of a generate call: the decode loop runs once per chunk, each step reading only
# the chunks filled so far, so a step reads on average (chunks + 1) / (2 chunks) of the cache
# instead of all of it. GPT-B, batch 8 with guidance, float32, on the 2-core CPU (the cache is 302
# of the 692 MB a step reads, bench/ar_sample.py), medians of 3 calls alternating in one process
# (a noisier hour than bench/ar_sample.py's 14.5 s for one chunk) / compile time:
# 1 chunk 16.3 s / 1.4 s; 4 chunks 13.7 s / 5.9 s; 8 chunks 12.5 s / 17.4 s; 16: compile 47 s.
# Every chunk compiles the model step once more, and compile time grows faster than the count:
# 4 repays its extra compile within two batches. Sequences shorter than 4 x 64 tokens get fewer
# chunks (one below 128 tokens): their cache is too small for the saving to repay a compile.
CACHE_CHUNKS = 4
MIN_CHUNK_POSITIONS = 64


def cache_chunks(num_tokens: int, requested: int | None = None, platform: str | None = None) -> int:
  """KV-cache chunks of a generate call: `requested`, else (on the CPU backend, where it was
  measured) CACHE_CHUNKS for sequences of at least CACHE_CHUNKS x MIN_CHUNK_POSITIONS tokens and
  fewer below, and 1 on other backends, whose compile cost and gain are unmeasured; at least 1
  and at most num_tokens. `platform` defaults to jax.default_backend()."""
  if requested is None:
    on_cpu = (platform or jax.default_backend()) == "cpu"
    requested = min(CACHE_CHUNKS, num_tokens // MIN_CHUNK_POSITIONS) if on_cpu else 1
  return max(1, min(requested, num_tokens))


def generate(model: GPT, labels: jax.Array, key: jax.Array, settings: SamplingSettings, *,
             guidance: bool | None = None, chunks: int | None = None) -> jax.Array:
  """Samples (B, num_tokens) int32 codes for class `labels` (B,). Call it inside `jax.jit`.

  `guidance` None = on when the scale is not 1; True forces the doubled (cond, null) batch.
  `chunks` splits the KV cache (`cache_chunks`: None = by length); the samples do not depend on it
  beyond float rounding of the attention sums.
  """
  guided = settings.cfg_scale != 1.0 if guidance is None else guidance
  b, t = labels.shape[0], model.num_tokens
  chunks = cache_chunks(t, chunks)
  size = chunk_size(t, chunks)                                             # positions per chunk
  rows = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)]) if guided else labels
  cache = model.init_cache(rows.shape[0], chunks=chunks)
  logits, cache = model.decode(model.embed(rows, None), cache, 0)          # (R, 1, V)

  def combine(logits, index):
    logits = logits[:, 0]
    if not guided:
      return logits
    cond, uncond = logits[:b], logits[b:]
    return cond + (guidance_scale(settings, index, t) - 1.0) * (cond - uncond)

  def body_in(chunk):
    def body(i, carry):                  # samples token i, feeds it at position i + 1
      cache, logits, tokens, key = carry
      key, sub = jax.random.split(key)
      tok = sample_token(combine(logits, i), sub, settings)                # (B,)
      tokens = tokens.at[:, i].set(tok)
      feed = jnp.concatenate([tok, tok]) if guided else tok
      logits, cache = model.decode(model.embed(None, feed[:, None]), cache, i + 1, chunk=chunk)
      return cache, logits, tokens, key
    return body

  carry = (cache, logits, jnp.zeros((b, t), jnp.int32), key)
  for chunk in range(chunks):            # positions chunk*size .. (chunk+1)*size - 1
    start, stop = max(chunk * size - 1, 0), min((chunk + 1) * size - 1, t - 1)
    if start < stop:
      carry = jax.lax.fori_loop(start, stop, body_in(chunk), carry)
  cache, logits, tokens, key = carry
  last = sample_token(combine(logits, t - 1), jax.random.split(key)[1], settings)
  return tokens.at[:, t - 1].set(last)
