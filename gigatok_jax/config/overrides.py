"""Dotted-key overrides of a config ('model.enc_heads': 10, or its text '10'), one reader for the
converter's `--config.<key>=<value>` flags, `Tokenizer.load(..., overrides=)` and `gigatok_jax.run`.

Values keep the type of the key they replace (text is read as a Python literal, 'true'/'false' as
booleans); an unknown key (with a "did you mean"), a group or a wrong type is a one-line ConfigError.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any, Mapping

import numpy as np

from gigatok_jax.errors import ConfigError


def get_key(config, key: str) -> Any:
  value = config
  for part in key.split("."):
    value = value[part]
  return tuple(value) if isinstance(value, list) else value


def set_key(config, key: str, value: Any) -> None:
  *groups, leaf = key.split(".")
  node = config
  for part in groups:
    node = node[part]
  node[leaf] = value


def parse_value(key: str, value: Any, current: Any) -> Any:
  """An override value (text from the command line, or a Python value) as the type of the key's
  current value; a one-line ConfigError when it does not fit."""
  want = type(current).__name__
  if isinstance(value, str) and not isinstance(current, str):
    text = value.strip()
    if isinstance(current, bool) and text.lower() in ("true", "false"):
      return text.lower() == "true"
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      if current is None:       # an unset optional key: plain text is a string
        return text
      raise ConfigError(key, f"cannot read {text!r} as a value of type {want}") from None
  elif isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
    value = value[1:-1]
  if isinstance(value, np.generic):                     # numpy scalars from Python callers
    value = value.item()
  if current is None:
    return value
  if isinstance(current, bool) or isinstance(value, bool):
    ok = isinstance(current, bool) and isinstance(value, bool)
  elif isinstance(current, int):
    ok = isinstance(value, int)
  elif isinstance(current, float):
    ok = isinstance(value, (int, float))
    value = float(value) if ok else value
  elif isinstance(current, (tuple, list)):
    ok = isinstance(value, (tuple, list))
    value = tuple(value) if ok else value
  else:
    ok = isinstance(value, type(current))
  if not ok:
    raise ConfigError(key, f"must be of type {want}, got {value!r}")
  return value


def apply_overrides(config, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
  """Sets each dotted key of `overrides` ('model.enc_heads': 10, or its text '10'; a leading
  'config.' is dropped) on `config`; returns them parsed. An unknown key is a ConfigError."""
  parsed = {}
  for raw_key, value in (overrides or {}).items():
    key = raw_key[len("config."):] if raw_key.startswith("config.") else raw_key
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        here = list(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(part, here, n=1)
        prefix = ".".join(parts[:i] + [close[0]]) if close else ""
        raise ConfigError(key, "unknown key" + (f" (did you mean '{prefix}'?)" if close else ""))
      if i < len(parts) - 1:
        node = node[part]
    if hasattr(node[parts[-1]], "keys"):
      raise ConfigError(key, "is a group of keys; override one of its keys")
    parsed[key] = parse_value(key, value, get_key(config, key))
    set_key(config, key, parsed[key])
  return parsed


def overrides_record(overrides: Mapping[str, Any] | None) -> dict[str, str]:
  """`overrides` as text (JSON-safe, order-free) for info.json and for comparing conversions."""
  out = {}
  for key, value in sorted((overrides or {}).items()):
    key = key[len("config."):] if key.startswith("config.") else key
    out[key] = value if isinstance(value, str) else repr(value)
  return out
