"""`Generator`: a class-conditional GPT and its tokenizer, sampling uint8 images in one call.

  tok = gigatok_jax.Tokenizer.load("runs/tokenizer")
  gen = gigatok_jax.Generator.load("runs/gpt", tokenizer=tok)
  images = gen.sample([207, 360, 387], cfg_scale=1.75, seed=0)   # (3, S, S, 3) uint8

Sampling follows `--mode=sample` exactly: batch b of the classes (padded to `batch_size` rows)
draws with key fold_in(key(seed), b), so the same classes, settings, seed and batch size give the
same images here and from the command line. The sampler is jitted once per (settings, batch size).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from gigatok_jax import inference, runs
from gigatok_jax.api import batching, inputs, sources
from gigatok_jax.api.tokenizer import Tokenizer, inference_mesh, with_inference_dtype
from gigatok_jax.errors import ConfigError, UserError
from gigatok_jax.models.sampler import SamplingSettings, generate


class Generator:
  """A loaded GPT with the tokenizer that decodes its codes. Build it with `Generator.load`."""

  def __init__(self, loaded: inference.Loaded, tokenizer: Tokenizer, *, batch_size: int = 8):
    m = loaded.config.model
    prefix_ok = bool(tokenizer.prefix_lengths) and 1 <= m.num_tokens <= tokenizer.num_tokens
    if m.vocab_size != tokenizer.codebook_size or (m.num_tokens != tokenizer.num_tokens
                                                   and not prefix_ok):
      raise UserError(f"the GPT models {m.num_tokens} tokens of a {m.vocab_size}-code vocabulary "
                      f"but the tokenizer gives {tokenizer.num_tokens} tokens of "
                      f"{tokenizer.codebook_size} codes: pass the tokenizer it was trained on")
    self._loaded = loaded
    self.config = loaded.config
    self.tokenizer = tokenizer
    self.num_classes = int(m.num_classes)
    self.step = loaded.step
    self.source = loaded.source
    self.mesh = loaded.mesh
    self.batch_size = batching.round_batch_size(batch_size, loaded.mesh, loaded.rules)
    self.defaults = SamplingSettings.from_config(loaded.config.sample)
    self.trace_count = 0
    self._samplers: dict[SamplingSettings, Any] = {}

  @classmethod
  def load(cls, src, *, tokenizer: Tokenizer | None = None, batch_size: int = 8, devices=None,
           recipe: str = "", overrides=None, cache_dir: str | None = None,
           dtype: str | None = None) -> "Generator":
    """The GPT in `src` (a run directory, a converted directory, an official .pt file or a
    registered name; `recipe` and `overrides` as in Tokenizer.load). `tokenizer` decodes its
    codes; when None, the run's
    `tokenizer.workdir` (and `tokenizer.recipe`) from its config.json is loaded, with the same
    `dtype` (as in Tokenizer.load: by default float32 on CPU, model.dtype elsewhere)."""
    path = sources.run_directory(src, recipe=recipe, overrides=overrides, cache_dir=cache_dir)
    config = runs.read_config(path, key="src")
    if config.get("task") != "gpt":
      raise UserError(f"{src}: holds a tokenizer, not a GPT; load it with "
                      "gigatok_jax.Tokenizer.load")
    if tokenizer is None:
      try:
        tok_cfg = runs.gpt_tokenizer_config(config)
      except ConfigError:
        raise UserError(f"{src}: its config names no tokenizer run (tokenizer.workdir); pass "
                        "tokenizer=gigatok_jax.Tokenizer.load(...)") from None
      tokenizer = Tokenizer.load(config.tokenizer.workdir, config=tok_cfg, devices=devices,
                                 batch_size=batch_size, dtype=dtype)
    mesh = inference_mesh(config, devices)
    return cls(inference.load(with_inference_dtype(config, dtype), path, mesh), tokenizer,
               batch_size=batch_size)

  def __repr__(self) -> str:
    m = self.config.model
    return (f"Generator({m.layers} layers x {m.width}, {self.num_classes} classes, {self.source}; "
            f"{self.tokenizer!r})")

  def settings(self, **overrides) -> SamplingSettings:
    """The recipe's sampling settings (config.sample) with the non-None `overrides`."""
    settings = dataclasses.replace(self.defaults,
                                   **{k: v for k, v in overrides.items() if v is not None})
    try:
      settings.check()
    except ValueError as e:
      raise inputs.InputError(str(e)) from None
    return settings

  def _sampler(self, settings: SamplingSettings):
    if settings not in self._samplers:
      loaded = self._loaded
      rows = loaded.batch_sharding(1)

      def fn(params, labels, key):                  # (B,) int32 -> (B, num_tokens) int32
        self.trace_count += 1
        return generate(loaded.model(params), labels, key, settings)
      self._samplers[settings] = jax.jit(fn, in_shardings=(loaded.spec.shardings, rows, None))
    return self._samplers[settings]

  def sample_codes(self, classes: Any, *, seed: int = 0, **settings) -> np.ndarray:
    """Token codes (N, num_tokens) for `classes`; `settings` as in `sample`."""
    labels = inputs.check_classes(classes, self.num_classes)
    sampler = self._sampler(self.settings(**settings))
    params = self._loaded.params
    codes = []
    with jax.set_mesh(self.mesh):
      for b, (start, stop) in enumerate(batching.chunks(len(labels), self.batch_size)):
        # The last batch repeats its labels to fill, as --mode=sample does (np.resize).
        chunk = np.resize(labels[start:stop], self.batch_size)
        key = jax.random.fold_in(jax.random.key(seed), b)
        codes.append(np.asarray(jax.device_get(sampler(params, chunk, key)))[:stop - start])
    return np.concatenate(codes)

  def sample(self, classes: Any, *, cfg_scale: float | None = None, cfg_schedule: str | None = None,
             cfg_step_fraction: float | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             return_codes: bool = False):
    """Images of `classes` (an int or a list of class ids), uint8 (N, S, S, 3).

    Unset settings take the recipe's `sample.*` values (`gen.defaults`): cfg_scale (1 = no
    guidance), cfg_schedule ('constant' or 'step': no guidance for the first cfg_step_fraction of
    the tokens), temperature (0 = greedy), top_k (0 = off), top_p (1 = off)."""
    codes = self.sample_codes(classes, seed=seed, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
                              cfg_step_fraction=cfg_step_fraction, temperature=temperature,
                              top_k=top_k, top_p=top_p)
    images = self.tokenizer.decode(codes)
    return (images, codes) if return_codes else images
