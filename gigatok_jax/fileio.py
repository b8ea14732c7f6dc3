"""Small file helpers every writer shares: atomic writes (temp file + rename) and sha256.

A crash mid-write must never leave a half-written file under its final name, so everything a run
writes beside its checkpoints (config.json, eval JSON, code metadata, converted weights) goes
through `atomic_write` here. Orbax owns the checkpoint directories themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Iterator

CHUNK = 1 << 22   # bytes per read when hashing (reference batches and weights reach ~10 GB)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[Any]:
  """Opens a temporary file beside `path`; on success it replaces `path`, on error it is removed.

  `mode` is "w" (text, utf-8) or "wb". Parent directories are created.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_text(path: str, text: str) -> str:
  with atomic_write(path) as f:
    f.write(text)
  return path


def atomic_write_json(path: str, obj: Any) -> str:
  """`obj` as indented JSON (numpy scalars become floats); returns `path`."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, default=float)
  return path


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in chunks (never the whole file at once)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(CHUNK):
      digest.update(block)
  return digest.hexdigest()
