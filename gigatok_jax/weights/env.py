"""The cache's place on local disk and the switches of the environment: `default_cache_dir`
($GIGATOK_CACHE_DIR, else ~/.cache/gigatok_jax) and `cache_root` (a given or default cache dir as
an absolute path), `offline_from_env` and `offline_reason` (GIGATOK_OFFLINE or HF_HUB_OFFLINE: no
network, ever), and `remove_path`, the one way the package deletes a stale file or directory.
"""

from __future__ import annotations

import os
import shutil


def _truthy(value: str | None) -> bool:
  return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_from_env() -> bool:
  """GIGATOK_OFFLINE, or Hugging Face's own HF_HUB_OFFLINE: no probing of the network, ever."""
  return _truthy(os.environ.get("GIGATOK_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def offline_reason() -> str:
  """Why downloads are off, for the error message: the variable that says so, else the argument."""
  for var in ("GIGATOK_OFFLINE", "HF_HUB_OFFLINE"):
    if _truthy(os.environ.get(var)):
      return f"{var}={os.environ[var]}"
  return "online=False / --offline"


def default_cache_dir() -> str:
  return os.path.abspath(os.path.expanduser(
      os.environ.get("GIGATOK_CACHE_DIR") or os.path.join("~", ".cache", "gigatok_jax")))


def cache_root(cache_dir: str | None) -> str:
  """`cache_dir` (None: the default) as an absolute path, `~` expanded. The cache is on a local
  disk by design (downloads and conversions): a gs:// one is refused with one line."""
  from gigatok_jax import fileio  # pylint: disable=import-outside-toplevel
  fileio.local_only(cache_dir or os.environ.get("GIGATOK_CACHE_DIR") or "~",
                    "the weights cache (GIGATOK_CACHE_DIR)")
  return os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))


def remove_path(path: str) -> None:
  """Deletes a file, link or directory tree at `path`; nothing there is not an error."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)
