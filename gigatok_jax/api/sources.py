"""Where a model named in `Tokenizer.load(src)` / `Generator.load(src)` lives on disk.

`src` may be:
  - a run directory: a training run (config.json + checkpoints/) or one that
    `python -m gigatok_jax.convert` made from a released file (config.json + pretrained/); local
    or on an object store (`gs://bucket/run`: read through `fileio` and Orbax);
  - an official PyTorch file (.pt / .pth / .bin / .safetensors): converted once into the weights
    cache (`$GIGATOK_CACHE_DIR`, else ~/.cache/gigatok_jax) under converted/<name>-<key>/, where the
    key is a hash of the file's absolute path, size and modification time, so an edited or replaced
    file is converted again and an unchanged one is read straight from the cache (local files
    only: the converter reads PyTorch files from disk; copy a gs:// one first);
  - the name of a registered artefact (`python -m gigatok_jax.weights list`, e.g. gigatok_ss):
    fetched and converted by the weights cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from gigatok_jax import fileio, runs
from gigatok_jax.config import overrides as overrides_lib
from gigatok_jax.errors import UserError

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _converted_dir(path: str, cache_dir: str | None) -> str:
  from gigatok_jax.weights import env  # pylint: disable=import-outside-toplevel
  st = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join(env.cache_root(cache_dir), "converted", f"{stem}-{key[:16]}")


def _is_run(path: str) -> bool:
  return runs.has_config(path)


def convert_file(path: str, *, recipe: str = "", overrides=None, cache_dir: str | None = None,
                 log=print) -> str:
  """The converted run directory of the official file `path` (converted now unless cached).

  `recipe` / `overrides` ({'model.enc_heads': 10, ...}) are the converter's (convert/release.py);
  a cached conversion is reused unless the call names a recipe or overrides other than the ones
  it was made with (none named = any cached conversion of the file).
  """
  from gigatok_jax.convert import release  # pylint: disable=import-outside-toplevel
  out = _converted_dir(path, cache_dir)
  if _is_run(out) and fileio.isfile(fileio.join(out, runs.PRETRAINED, runs.INFO_FILE)):
    info = runs.read_imported_info(os.path.join(out, runs.PRETRAINED))
    same_recipe = not recipe or recipe == info.get("recipe")
    same_overrides = not overrides or overrides_lib.overrides_record(overrides) == info.get("overrides")
    if same_recipe and same_overrides:
      return out
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    release.import_checkpoint(path, tmp, recipe=recipe, overrides=overrides, log=log)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def run_directory(src, *, recipe: str = "", overrides=None, cache_dir: str | None = None,
                  log=print) -> str:
  """The run directory that `src` (see the module docstring) names; a UserError when none.
  `recipe` and `overrides` apply to an official file's conversion only."""
  src = os.fspath(src)
  path = src if fileio.is_remote(src) else os.path.expanduser(src)
  if overrides and not fileio.isfile(path):
    raise UserError(f"{src}: overrides apply to the conversion of an official weight file, not "
                    "to a run directory or a registered model")
  if fileio.isdir(path):
    if not _is_run(path):
      raise UserError(f"{src}: not a gigatok_jax run directory (no {runs.CONFIG_FILE}); pass a "
                      "training run, a directory made by `python -m gigatok_jax.convert`, or an "
                      "official .pt file")
    return path
  if fileio.isfile(path):
    if not path.endswith(WEIGHT_FILE_SUFFIXES):
      raise UserError(f"{src}: not a weight file (expected one of {', '.join(WEIGHT_FILE_SUFFIXES)})")
    fileio.local_only(path, "converting an official weight file")
    return convert_file(path, recipe=recipe, overrides=overrides, cache_dir=cache_dir,
                        log=log)
  from gigatok_jax import weights  # pylint: disable=import-outside-toplevel
  names = [a.name for a in weights.list_artefacts() if a.output == "run"]
  if src in names:
    return weights.resolve(src, cache_dir=cache_dir)
  raise UserError(f"{src}: no such run directory or weight file, and not a known model name "
                  f"({', '.join(names)})")
