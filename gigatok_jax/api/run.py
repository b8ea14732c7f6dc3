"""`gigatok_jax.run(recipe, workdir, mode=..., overrides=...)`: the command line, from Python.

  gigatok_jax.run("configs/demo.py", "/tmp/gigatok_demo", overrides={"total_steps": 200})
is `python -m gigatok_jax.main --config=configs/demo.py --workdir=/tmp/gigatok_demo
--config.total_steps=200` in the calling process (a notebook): the same recipe loading, the same
config checks before anything compiles, the same mode table (gigatok_jax/modes/).
"""

from __future__ import annotations

from typing import Any, Mapping

from gigatok_jax.config import overrides as overrides_lib


def run(recipe: str, workdir: str | None = None, mode: str = "train", *,
        overrides: Mapping[str, Any] | None = None, progress: bool = True):
  """Loads `recipe` ('configs/x.py[:variant]'), applies `overrides` and runs `mode` in `workdir`;
  returns what the mode returns (e.g. the metrics dict of reconstruct, eval and sample)."""
  from gigatok_jax import config as config_lib, modes  # pylint: disable=import-outside-toplevel
  config = config_lib.load_recipe(recipe, key="recipe")
  overrides_lib.apply_overrides(config, overrides)
  return modes.run_mode(mode, config, workdir, progress=progress)
