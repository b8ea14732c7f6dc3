"""The config package: recipe schemas, recipe loading and the checks before compilation.

  common.py     groups both kinds share (mesh, distributed, axis rules) and recipe variants
  tokenizer.py  the tokenizer schema (sizes, model group, `:tiny` overrides)
  gpt.py        the GPT schema
  validate.py   every config check, one entry point `validate(config, ...)`

Recipe files read `from gigatok_jax import config` then `config.tokenizer_config(...)`,
`config.parse_variant(variant, ...)`, `config.with_variant(c, variant)`; `load_recipe` loads one
from 'path/to/recipe.py[:variant]'.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from gigatok_jax.config.common import (DEFAULT_AXIS_RULES, Variant, distributed_config,
                                       mesh_config, parse_variant)
from gigatok_jax.config.gpt import (GPT_AXIS_RULES, GPT_SIZES, gpt_config, gpt_model_config,
                                    gpt_tiny_overrides)
from gigatok_jax.config.tokenizer import SIZES, model_config, tiny_model_overrides, tokenizer_config
from gigatok_jax.errors import ConfigError

__all__ = [
    "DEFAULT_AXIS_RULES", "GPT_AXIS_RULES", "GPT_SIZES", "SIZES", "Variant", "distributed_config",
    "gpt_config", "gpt_model_config", "gpt_tiny_overrides", "load_recipe", "mesh_config",
    "model_config", "parse_variant", "split_spec", "tiny_model_overrides", "tokenizer_config",
    "with_variant",
]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def split_spec(spec: str) -> tuple[str, str]:
  """'path/to/recipe.py[:variant]' -> (path, variant); the variant itself is the recipe's to parse
  (with `parse_variant`)."""
  path, _, variant = spec.partition(":")
  return path, variant


def load_recipe(spec: str, key: str = "tokenizer.recipe") -> ml_collections.ConfigDict:
  """A recipe from 'path/to/recipe.py[:variant]' (as --config takes it); `key` names it in errors."""
  path, variant = split_spec(spec)
  repo_path = os.path.join(_REPO, path)
  if path and not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(repo_path):
    path = repo_path   # e.g. configs/x.py from outside the checkout (editable install)
  if not path or not os.path.isfile(path):
    raise ConfigError(key, f"recipe file {path!r} not found (expected e.g. configs/tokenizer_ss.py)")
  module_spec = importlib.util.spec_from_file_location(f"_recipe_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    # Like ml_collections' config_flags: get_config() without a variant, get_config(v) with one.
    return module.get_config(variant) if variant else module.get_config()
  except ValueError as e:
    raise ConfigError(key, f"{spec}: {e}") from None


def with_variant(c: ml_collections.ConfigDict, variant: str,
                 tiny=None) -> ml_collections.ConfigDict:
  """Applies a recipe variant named after the colon: `--config=configs/x.py:tiny`.

  `tiny` is the overrides function (default: the tokenizer's; GPT recipes pass gpt_tiny_overrides).
  """
  if parse_variant(variant).tiny:
    return (tiny or tiny_model_overrides)(c)
  return c
