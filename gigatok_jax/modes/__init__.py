"""Everything the command line can do: one module per mode, listed once in `TABLE`.

Each mode module has `run(config, workdir, *, progress=True, options={}) -> dict | str | None`;
`options` carries the few command-line flags that are not config keys (`--aot_targets`,
`--aot_output`). `TABLE` says, per (mode, recipe kind), which module runs it and what the config
check before it must cover (`config.validate.validate` keyword arguments; `run_mode` adds
`mode=<name>`, which selects that mode's own checks there), so `main.py` only looks up and calls. Modes do not import each other: `ar_probe`, the one mode that chains others, runs them
through `run_mode` here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from gigatok_jax.errors import UserError

KINDS = ("tokenizer", "gpt")


@dataclasses.dataclass(frozen=True)
class Mode:
  module: str                          # gigatok_jax.modes.<module>
  help: str
  checks: Callable[[Any], dict] = lambda config: {}   # config.validate.validate keyword arguments
  needs_workdir: bool = True


_NO_DATA = lambda config: {"check_data": False}   # noqa: E731 - a table of small lambdas

TABLE: dict[tuple[str, str], Mode] = {
    ("train", "tokenizer"): Mode("train", "train, or resume from DIR/checkpoints"),
    ("train", "gpt"): Mode("train", "train, or resume from DIR/checkpoints"),
    ("summary", "tokenizer"): Mode("summary", "parameter table from abstract shapes", _NO_DATA, False),
    ("summary", "gpt"): Mode("summary", "parameter table from abstract shapes", _NO_DATA, False),
    ("aot", "tokenizer"): Mode("aot", "compile the train step for TPU slices", needs_workdir=False),
    ("aot", "gpt"): Mode("aot", "compile the train step for TPU slices", needs_workdir=False),
    ("prepare_data", "tokenizer"): Mode("prepare_data", "write ArrayRecord shards",
                                        needs_workdir=False),
    ("reconstruct", "tokenizer"): Mode(
        "reconstruct", "encode + decode images with the latest checkpoint",
        lambda config: {"check_data": not config.data.reconstruct_input, "check_teachers": False}),
    ("eval", "tokenizer"): Mode("eval_tokenizer", "rFID, PSNR, SSIM, codebook usage",
                                lambda config: {"check_teachers": False}),
    ("eval", "gpt"): Mode("eval_gpt", "gFID, IS, precision/recall, validation loss", _NO_DATA),
    ("extract_codes", "gpt"): Mode("extract_codes", "tokenize a dataset with a trained tokenizer",
                                   _NO_DATA),
    ("sample", "gpt"): Mode("sample", "class-conditional sampling, decoded by the tokenizer",
                            _NO_DATA),
    ("probe", "gpt"): Mode("probe", "linear probe of the frozen GPT's features"),
    ("ar_probe", "gpt"): Mode("ar_probe", "train -> sample -> gFID -> val loss -> linear probe"),
}
NAMES = tuple(dict.fromkeys(name for name, _ in TABLE))


def kind_of(config) -> str:
  return config.get("task", "tokenizer")


def find(name: str, config) -> Mode:
  """The mode `name` for the recipe's kind; a one-line error when it does not apply."""
  kind = kind_of(config)
  mode = TABLE.get((name, kind))
  if mode is None:
    allowed = ", ".join(n for n, k in TABLE if k == kind)
    raise UserError(f"--mode={name} does not apply to a {kind} recipe (its modes: {allowed})")
  return mode


def run_mode(name: str, config, workdir: str | None, *, progress: bool = True,
             options: Mapping[str, Any] | None = None, validate: bool = True):
  """Checks the config for mode `name` (before anything compiles), then runs it."""
  mode = find(name, config)
  if mode.needs_workdir and not workdir:
    raise UserError(f"--workdir is required for --mode={name}")
  if validate and name not in ("aot", "prepare_data"):   # aot checks per target; prepare: its keys
    from gigatok_jax.config import validate as config_checks  # pylint: disable=import-outside-toplevel
    config_checks.validate(config, mode=name, **mode.checks(config))
  module = importlib.import_module(f"gigatok_jax.modes.{mode.module}")
  return module.run(config, workdir, progress=progress, options=options or {})
