"""`Tokenizer`: a trained tokenizer in one call, uint8 images and int codes in and out.

  tok = gigatok_jax.Tokenizer.load("/tmp/gigatok_demo")      # a run dir, converted dir or .pt file
  codes = tok.encode(["cat.jpg", pil_image, uint8_array])    # (N, num_tokens) int32
  images = tok.decode(codes)                                 # (N, S, S, 3) uint8
  recon = tok.reconstruct(images)                            # encode + decode in one call

Inference only: the builder's abstract model and the weights (EMA when the run kept them), no
optimizer, discriminator or teacher (inference.py). Each call is jitted once per batch size
(`batch_size` rows, rounded up to the data-parallel device count) and runs on every local device.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gigatok_jax import inference, parallel, runs
from gigatok_jax.api import batching, inputs, sources
from gigatok_jax.errors import UserError
from gigatok_jax.models.tokenizer import num_tokens


def to_uint8_device(images: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8 on device (the rounding of images.to_uint8)."""
  return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def with_inference_dtype(config, dtype: str | None):
  """`config` with `inference_dtype` = `dtype` (a copy; None = unchanged); one line for a bad one."""
  if dtype is None:
    return config
  if dtype not in inference.INFERENCE_DTYPES:
    raise UserError(f"dtype must be one of {inference.INFERENCE_DTYPES}, got {dtype!r}")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.inference_dtype = dtype
  return config


def inference_mesh(config, devices) -> jax.sharding.Mesh:
  """The recipe's mesh axes over `devices` (default: this process's devices), one slice."""
  mesh_cfg = config.mesh.copy_and_resolve_references()
  for key in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
    mesh_cfg[key] = 1
  return parallel.make_mesh(mesh_cfg, list(devices) if devices is not None else jax.local_devices())


class Tokenizer:
  """A loaded tokenizer. Build it with `Tokenizer.load(src)`."""

  def __init__(self, loaded: inference.Loaded, *, batch_size: int = 8):
    self._loaded = loaded
    self.config = loaded.config
    self.image_size = int(loaded.config.data.image_size)
    self.num_tokens = num_tokens(loaded.config.model, self.image_size)
    self.codebook_size = int(loaded.config.model.codebook_size)
    self.step = loaded.step
    self.source = loaded.source
    self.mesh = loaded.mesh
    self.batch_size = batching.round_batch_size(batch_size, loaded.mesh, loaded.rules)
    self.trace_count = 0       # times a function was traced (= compiled); see tests/test_api.py
    spec = loaded.spec
    images_in = loaded.batch_sharding(4)
    codes_in = loaded.batch_sharding(2)

    def encode(params, images):                     # (B, S, S, 3) uint8 -> (B, N) int32
      self.trace_count += 1
      x = images.astype(jnp.float32) / 127.5 - 1.0
      return (spec.merge(params).encode(x),)

    def decode(params, codes):                      # (B, N) int32 -> (B, S, S, 3) uint8
      self.trace_count += 1
      return (to_uint8_device(spec.merge(params).decode_indices(codes)),)

    def reconstruct(params, images):                # -> ((B, S, S, 3) uint8, (B, N) int32)
      self.trace_count += 1
      out = spec.merge(params)(images.astype(jnp.float32) / 127.5 - 1.0)
      return to_uint8_device(out.reconstruction), out.indices

    shardings = spec.shardings
    self._encode = jax.jit(encode, in_shardings=(shardings, images_in))
    self._decode = jax.jit(decode, in_shardings=(shardings, codes_in))
    self._reconstruct = jax.jit(reconstruct, in_shardings=(shardings, images_in))

  @classmethod
  def load(cls, src, *, batch_size: int = 8, devices=None, recipe: str = "", overrides=None,
           cache_dir: str | None = None, config=None, dtype: str | None = None) -> "Tokenizer":
    """The tokenizer in `src`: a training run directory, a directory made by
    `python -m gigatok_jax.convert`, an official PyTorch file (converted once into the weights
    cache; `recipe` names the recipe to start from, `overrides` sets config keys the file does not
    fix, e.g. {"model.enc_heads": 10, "model.dec_heads": 12} for a size the reference never
    released: see convert/release.py) or a registered
    model name (e.g. 'gigatok_ss'). `config` replaces the run's saved config.json (rarely needed:
    a GPT whose `tokenizer.recipe` overrides its tokenizer's). `dtype` sets the compute dtype
    (the config's `inference_dtype`: None keeps the run's, by default 'auto' = float32 on CPU,
    model.dtype elsewhere; 'model', 'float32' or 'bfloat16')."""
    path = sources.run_directory(src, recipe=recipe, overrides=overrides, cache_dir=cache_dir)
    config = config if config is not None else runs.read_config(path, key="src")
    if config.get("task", "tokenizer") != "tokenizer":
      raise UserError(f"{src}: holds a {config.task}, not a tokenizer; load it with "
                      "gigatok_jax.Generator.load")
    mesh = inference_mesh(config, devices)
    return cls(inference.load(with_inference_dtype(config, dtype), path, mesh),
               batch_size=batch_size)

  def __repr__(self) -> str:
    return (f"Tokenizer({self.config.model.kind}, {self.image_size} px -> {self.num_tokens} tokens "
            f"of {self.codebook_size} codes, {self.source}, {len(self.mesh.devices.flat)} device(s))")

  def preprocess(self, images: Any) -> np.ndarray:
    """What the model sees: uint8 (N, S, S, 3) after the centre crop (api/inputs.py)."""
    return inputs.images_to_batch(images, self.image_size)

  def encode(self, images: Any) -> np.ndarray:
    """Images (see `preprocess`) -> codes, int32 (N, num_tokens)."""
    batch = self.preprocess(images)
    params = self._loaded.params
    return batching.map_batches(lambda b: self._encode(params, b), batch, self.batch_size,
                                self.mesh)[0]

  @property
  def prefix_lengths(self) -> tuple[int, ...]:
    """Token counts this tokenizer was trained to decode from (`model.nested_dropout`; () when
    it decodes from all `num_tokens` only)."""
    return tuple(self.config.model.get("nested_dropout", ()) or ())

  def _prefix(self, codes: Any, num_tokens: int | None) -> tuple[Any, int]:
    """(codes cut to the first `num_tokens`, that count); any count when nested dropout was on."""
    if num_tokens is None:
      shape = np.shape(codes)
      num_tokens = (shape[-1] if self.prefix_lengths and len(shape) in (1, 2)
                    and 0 < shape[-1] <= self.num_tokens else self.num_tokens)
    if num_tokens != self.num_tokens:
      if not self.prefix_lengths:
        raise inputs.InputError(f"num_tokens={num_tokens}: this tokenizer decodes from all "
                                f"{self.num_tokens} tokens only (it was trained without "
                                "model.nested_dropout)")
      if not 1 <= num_tokens <= self.num_tokens:
        raise inputs.InputError(f"num_tokens={num_tokens} is outside 1..{self.num_tokens}")
      codes = np.asarray(codes)[..., :num_tokens]
    return codes, num_tokens

  def decode(self, codes: Any, *, num_tokens: int | None = None) -> np.ndarray:
    """Codes (N, num_tokens) ints in [0, codebook_size) -> images, uint8 (N, S, S, 3).

    A tokenizer trained with nested dropout (`prefix_lengths`) also decodes from the first k
    tokens: pass codes (N, k), or full codes and `num_tokens=k`."""
    codes, k = self._prefix(codes, num_tokens)
    codes = inputs.check_codes(codes, k, self.codebook_size)
    params = self._loaded.params
    return batching.map_batches(lambda b: self._decode(params, b), codes, self.batch_size,
                                self.mesh)[0]

  def reconstruct(self, images: Any, *, return_codes: bool = False,
                  num_tokens: int | None = None):
    """Images -> their reconstructions, uint8 (N, S, S, 3) (and the codes when asked); with
    `num_tokens=k` (nested dropout), decoded from the first k tokens."""
    if num_tokens is not None and num_tokens != self.num_tokens:
      codes = self.encode(images)
      recon = self.decode(codes, num_tokens=num_tokens)
      return (recon, codes) if return_codes else recon
    batch = self.preprocess(images)
    params = self._loaded.params
    recon, codes = batching.map_batches(lambda b: self._reconstruct(params, b), batch,
                                        self.batch_size, self.mesh)
    return (recon, codes) if return_codes else recon
