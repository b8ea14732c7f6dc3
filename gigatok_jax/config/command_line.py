"""The command line, checked before absl parses it: every mistake there is one line naming the
culprit (`main.py` prints it and exits 2), never an ml_collections or absl traceback.

absl's `config_flags` loads the recipe and applies `--config.<key>=<value>` while it parses the
flags; a missing recipe file, a syntax error in it, an unknown variant, an unknown or mistyped key
or an unreadable value surfaces there as a 50-line traceback with exit status 1. So `check_argv`
loads the recipe and applies the overrides to a copy first, with our own messages; whatever absl
still refuses afterwards is caught by `main.py`'s flag parser and reported in one line too.
"""

from __future__ import annotations

import os
import traceback
from typing import Sequence

from gigatok_jax.config import load_recipe
from gigatok_jax.config.overrides import apply_overrides
from gigatok_jax.errors import ConfigError, UserError


def _flag_values(argv: Sequence[str], name: str) -> list[tuple[str, str | None]]:
  """(flag, value) for each `--name...=value` / `--name... value` in argv (value None: absent)."""
  out = []
  for i, arg in enumerate(argv):
    if not arg.startswith(f"--{name}"):
      continue
    flag, eq, value = arg[2:].partition("=")
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
    out.append((flag, value))
  return out


def _load(spec: str):
  """The recipe `spec` names; one-line errors for a missing file, a syntax error (file:line), an
  unknown variant or any other exception raised while the recipe builds its config."""
  try:
    return load_recipe(spec, key="--config")
  except ConfigError as e:
    raise UserError(f"--config: {e.message}") from None
  except UserError:
    raise
  except SyntaxError as e:
    raise UserError(f"--config: syntax error in {e.filename}:{e.lineno}: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except  - the recipe is the user's code
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(spec.partition(":")[0])]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else spec
    raise UserError(f"--config: {where}: {type(e).__name__}: {e}") from None


def check_argv(argv: Sequence[str]) -> None:
  """Raises a one-line UserError/ConfigError for a bad --config, --config.<key> or --workdir."""
  specs = [(flag, value) for flag, value in _flag_values(argv, "config") if flag == "config"]
  overrides = [(flag, value) for flag, value in _flag_values(argv, "config.")]
  if not specs:
    if overrides:
      raise UserError("--config is required before --config.<key> overrides "
                      "(e.g. --config=configs/demo.py)")
    return
  spec = specs[-1][1]
  if not spec:
    raise UserError("--config needs a recipe file, e.g. --config=configs/demo.py")
  config = _load(spec)
  for flag, value in overrides:
    key = flag[len("config."):]
    if value is None:
      raise ConfigError(key, f"--{flag} needs a value (--{flag}=VALUE)")
    apply_overrides(config, {key: value})
  for _, workdir in _flag_values(argv, "workdir"):
    if workdir:
      check_workdir(workdir)


def check_workdir(workdir: str) -> None:
  """A local workdir must be a directory we can create and write into (gs:// is checked by the
  first write there)."""
  if "://" in workdir:
    return
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--workdir={workdir}: is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".gigatok_write_test-{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"--workdir={workdir}: cannot write there ({e.strerror or e})") from None
