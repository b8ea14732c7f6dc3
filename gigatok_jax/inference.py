"""A trained model ready to run: the builder's abstract model + the weights `runs` picks for it.

Inference modes (reconstruct, eval, extract_codes, sample, probe) and the converter's export load
through here; nothing here builds an optimizer, a discriminator or a teacher.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gigatok_jax import build, console, parallel, runs


class Loaded(NamedTuple):
  config: Any
  mesh: jax.sharding.Mesh
  spec: build.ModelSpec
  params: Any          # EMA weights when the run kept them, else the trained weights
  step: int
  source: str          # "checkpoint step N" or "imported <path>"

  @property
  def rules(self):
    return build.axis_rules(self.config)

  def model(self, params=None):
    """The nnx module around `params` (default: the loaded weights); use it inside a jit."""
    return self.spec.merge(self.params if params is None else params)

  def batch_sharding(self, ndim: int):
    return parallel.batch_sharding(self.mesh, self.rules, ndim)


# `inference_dtype` (a top-level key of every recipe): the compute dtype of inference.
INFERENCE_DTYPES = ("auto", "model", "float32", "bfloat16")


def compute_dtype(config, platform: str) -> str:
  """The dtype inference computes in on `platform`, by the recipe's `inference_dtype`:
  'model' = model.dtype; 'float32' / 'bfloat16' = that; 'auto' (the default) = model.dtype, except
  float32 on the CPU backend. XLA:CPU has no fast bfloat16 matmul: on the 2-core CPU a (2, 768) @
  (768, 16384) product (GPT-B's head at batch 1 with guidance) takes 22.9 ms in bfloat16 and 2.3 ms
  in float32, and GPT-B sampling runs faster in float32 (README "Benchmark"). Training keeps
  model.dtype everywhere: this is for inference only, where float32 only adds precision."""
  choice = config.get("inference_dtype", "auto")
  if choice == "model" or (choice == "auto" and platform != "cpu"):
    return config.model.dtype
  return "float32" if choice == "auto" else choice


def load(config, workdir: str, mesh: jax.sharding.Mesh) -> Loaded:
  """The recipe's model (tokenizer or GPT, by `config.task`) with the weights of run `workdir`:
  its latest checkpoint, else its imported weights, restored straight into `mesh`'s shardings.
  The model computes in `compute_dtype` (`Loaded.config.model.dtype` says which)."""
  dtype = compute_dtype(config, mesh.devices.flat[0].platform)
  if dtype != config.model.dtype:
    console.info(f"inference computes in {dtype} (model.dtype is {config.model.dtype}; "
                 f"inference_dtype={config.get('inference_dtype', 'auto')!r})")
    config = copy.deepcopy(config)
    with config.unlocked():
      config.model.dtype = dtype
  spec = build.generator(config, mesh)
  what = "GPT" if config.get("task") == "gpt" else "tokenizer"
  w = runs.inference_weights(config, workdir, spec.abstract, what)
  return Loaded(config, mesh, spec, w.params, w.step, w.source)


def reconstruct_fn(spec: build.ModelSpec, num_tokens: int | None = None):
  """jit((params, images) -> (reconstructions clipped to [-1, 1], code indices)); `num_tokens`
  decodes from that prefix of the tokens (nested dropout; None = all)."""
  def fn(params, images):
    out = spec.merge(params)(images, keep=num_tokens)
    return jnp.clip(out.reconstruction, -1.0, 1.0), out.indices
  return jax.jit(fn)


def reconstruct_prefixes_fn(spec: build.ModelSpec, lengths: tuple[int, ...]):
  """jit((params, images) -> (reconstructions, code indices, one reconstruction per prefix
  length in `lengths`)), all clipped to [-1, 1]. Encodes and quantizes once: every prefix decodes
  from the same quantized tokens (nested dropout)."""
  lengths = tuple(int(k) for k in lengths)

  def fn(params, images):
    model = spec.merge(params)
    quantized = model.quantize(model.encode_latents(images))        # (B, N, code_dim)
    full = model.decode_quantized(quantized.quantized)[0]           # (B, H, W, 3)
    parts = tuple(jnp.clip(model.decode_quantized(quantized.quantized, keep=k)[0], -1.0, 1.0)
                  for k in lengths)
    return jnp.clip(full, -1.0, 1.0), quantized.indices, parts
  return jax.jit(fn)
