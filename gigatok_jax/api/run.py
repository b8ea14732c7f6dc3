"""`gigatok_jax.run(recipe, workdir, mode=..., overrides=...)`: the command line, from Python.

  gigatok_jax.run("configs/demo.py", "/tmp/gigatok_demo", overrides={"total_steps": 200})
is `python -m gigatok_jax.main --config=configs/demo.py --workdir=/tmp/gigatok_demo
--config.total_steps=200` in the calling process (a notebook): the same recipe loading, the same
config checks before anything compiles, the same mode table (gigatok_jax/modes/).
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from gigatok_jax.errors import ConfigError


def apply_overrides(config, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys ('optim.lr') on `config`; an unknown key or a wrong type is a ConfigError."""
  for key, value in (overrides or {}).items():
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if part not in node:
        where = ".".join(parts[:i])
        close = difflib.get_close_matches(part, list(node.keys()), n=1)
        hint = f" (did you mean '{'.'.join(parts[:i] + close)}'?)" if close else ""
        raise ConfigError(key, f"unknown key{f' in {where}' if where else ''}{hint}")
      if i < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = value
    except TypeError as e:
      raise ConfigError(key, str(e).splitlines()[0]) from None


def run(recipe: str, workdir: str | None = None, mode: str = "train", *,
        overrides: Mapping[str, Any] | None = None, progress: bool = True):
  """Loads `recipe` ('configs/x.py[:variant]'), applies `overrides` and runs `mode` in `workdir`;
  returns what the mode returns (e.g. the metrics dict of reconstruct, eval and sample)."""
  from gigatok_jax import config as config_lib, modes  # pylint: disable=import-outside-toplevel
  config = config_lib.load_recipe(recipe, key="recipe")
  apply_overrides(config, overrides)
  return modes.run_mode(mode, config, workdir, progress=progress)
