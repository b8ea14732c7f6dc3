"""The optional `[tfds]` extra: TensorFlow Datasets and TensorFlow are not in the default install.

`pip install -e '.[tfds]'` adds them, for data.source='tfds' and the ImageNet preparation
(data.prepare_source='imagenet2012'). Without them, using either is a one-line config error naming
the extra, not an ImportError traceback.
"""

from __future__ import annotations

import importlib
import importlib.util

from gigatok_jax.errors import ConfigError

INSTALL = "pip install -e '.[tfds]'"


def _error(key: str, value: str, missing: str) -> ConfigError:
  return ConfigError(key, f"{value!r} needs TensorFlow Datasets and TensorFlow (the optional "
                          f"'tfds' extra; {missing} is not installed): {INSTALL}")


def check_installed(key: str, value: str,
                    modules: tuple[str, ...] = ("tensorflow_datasets",)) -> None:
  """Raises the ConfigError of `require` without importing anything (TensorFlow takes seconds)."""
  for name in modules:
    if importlib.util.find_spec(name) is None:
      raise _error(key, value, name)


def require(key: str, value: str, modules: tuple[str, ...] = ("tensorflow_datasets",)):
  """Imports `modules` and returns the first; a missing one is a ConfigError(key) naming the
  extra."""
  loaded = []
  for name in modules:
    try:
      loaded.append(importlib.import_module(name))
    except ImportError as e:
      raise _error(key, value, getattr(e, "name", None) or name) from None
  return loaded[0]
