"""The one path layer: every file a run reads or writes goes through here, on local disks and in
gs:// buckets alike (other epath schemes, e.g. s3://, once their fsspec package is installed).

Why one layer: a run's workdir may be `gs://bucket/run` (a TPU pod writes where every host and the
user can read). Python's `open`, `os.makedirs` or `np.savez` would turn that into a local folder
`./gs:/bucket/run/`; only Orbax (checkpoints) understood the bucket. So paths stay plain strings
everywhere in the package and this module decides, per path, how to touch it:
  - local paths use `os` / `open` exactly as before (so local behaviour, speed and error messages do
    not change);
  - paths with a scheme (`gs://...`) use etils `epath`, the layer Orbax itself uses. Without
    TensorFlow, epath reaches gs:// through fsspec + gcsfs (a core dependency); where TensorFlow is
    installed (the [tfds] extra) it uses `tf.io.gfile` instead, unless EPATH_USE_TF=false.

Atomic writes: a crash mid-write must never leave a half-written file under its final name. Locally
that is a temporary file beside the target and a rename (as before). On an object store an object
appears only when its upload completes, so the bytes are written to a local temporary file first
and uploaded as one object when the writer finishes without error (a rename on GCS would be a copy
plus a delete, i.e. not atomic). Orbax owns the checkpoint directories themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator

from gigatok_jax.errors import UserError

CHUNK = 1 << 22   # bytes per read when hashing or copying (reference batches and weights: ~10 GB)


def _fresh_listings() -> None:
  """gcsfs keeps every directory listing of a process and never expires it, and takes file sizes
  from it: an object that another host, TensorStore or a rerun rewrote afterwards would be read
  with its old size (a truncated image, a short shard). Listings are fetched afresh instead (one
  request more per query); a `gs` / `gcs` setting the user made in fsspec's config wins."""
  try:
    import fsspec  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_fresh_listings()


# ---------------------------------------------------------------------------------- path strings
def is_remote(path) -> bool:
  """True for object-store URLs (`gs://bucket/x`, `s3://...`): anything with a scheme."""
  return "://" in os.fspath(path)


def resolve(path) -> str:
  """The canonical form of `path`: local paths absolute with `~` expanded; URLs unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(base, *parts) -> str:
  """`os.path.join` for local paths, '/'-joins for URLs (also on Windows)."""
  base = os.fspath(base)
  if is_remote(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def dirname(path) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return posixpath.dirname(path.rstrip("/"))
  return os.path.dirname(path)


def basename(path) -> str:
  path = os.fspath(path)
  return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def local_only(path, what: str) -> str:
  """`path` unchanged if local; a one-line UserError naming `what` for an object-store URL."""
  path = os.fspath(path)
  if is_remote(path):
    raise UserError(f"{what}: {path} is not on a local disk; {what} reads and writes local files "
                    "only (copy it first, e.g. `gcloud storage cp`)")
  return path


def _epath(path):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(os.fspath(path))


# ---------------------------------------------------------------------------------- queries
def exists(path) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  """A directory; on an object store, a prefix that holds at least one object."""
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  p = _epath(path)
  try:
    return not p.stat().is_directory
  except (FileNotFoundError, OSError):
    return False


def size(path) -> int:
  return int(_epath(path).stat().length) if is_remote(path) else os.path.getsize(path)


def mtime(path) -> float:
  """Modification time in seconds (whole seconds on object stores)."""
  return float(_epath(path).stat().mtime) if is_remote(path) else os.path.getmtime(path)


def listdir(path) -> list[str]:
  """Sorted names (not paths) of the entries of a directory."""
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def scan(path) -> tuple[list[str], list[str]]:
  """(sorted sub-directory names, sorted file names) of a directory, in one listing request on an
  object store (telling files from prefixes there would otherwise cost one request per entry)."""
  if not is_remote(path):
    dirs, files = [], []
    for name in os.listdir(path):
      (dirs if os.path.isdir(os.path.join(path, name)) else files).append(name)
    return sorted(dirs), sorted(files)
  for _, dirs, files in _epath(path).walk():
    return sorted(d.rstrip("/") for d in dirs), sorted(files)
  return [], []


def glob(pattern) -> list[str]:
  """Sorted paths matching a glob pattern (`*`, `?`, `[...]`; no `**`)."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    import glob as glob_lib  # pylint: disable=import-outside-toplevel
    return sorted(glob_lib.glob(pattern))
  scheme, rest = pattern.split("://", 1)
  parts = rest.split("/")
  fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
  fixed = max(fixed, 1)    # the bucket itself is never a pattern
  base = f"{scheme}://" + "/".join(parts[:fixed])
  if fixed == len(parts):
    return [pattern] if exists(pattern) else []
  return sorted(os.fspath(p) for p in _epath(base).glob("/".join(parts[fixed:])))


# ---------------------------------------------------------------------------------- reading
def open_read(path, mode: str = "rb"):
  """A file object for reading ('rb' or 'r'); seekable on object stores too (ranged reads)."""
  if mode not in ("r", "rb"):
    raise ValueError(f"open_read: mode must be 'r' or 'rb', got {mode!r}")
  if is_remote(path):
    return _epath(path).open(mode)
  return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))   # noqa: SIM115


def read_bytes(path) -> bytes:
  with open_read(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path) -> Any:
  return json.loads(read_text(path))


def sha256_file(path) -> str:
  """Hex sha256 of a file, read in chunks (never the whole file at once)."""
  digest = hashlib.sha256()
  with open_read(path, "rb") as f:
    while block := f.read(CHUNK):
      digest.update(block)
  return digest.hexdigest()


# ---------------------------------------------------------------------------------- writing
def makedirs(path) -> None:
  """Creates a directory and its parents (no-op if present). Object stores have no directories:
  nothing to do there (asking for the bucket's metadata would need more than object permissions;
  a missing bucket shows at the first write)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def _local_tmp(suffix: str = "") -> str:
  fd, tmp = tempfile.mkstemp(prefix="gigatok_upload-", suffix=suffix)
  os.close(fd)
  return tmp


def upload(local_path: str, path) -> str:
  """Copies the local file `local_path` to `path` (local or remote) as one write; returns `path`."""
  path = os.fspath(path)
  if not is_remote(path):
    makedirs(os.path.dirname(os.path.abspath(path)))
    shutil.copyfile(local_path, path)
    return path
  with open(local_path, "rb") as src, _epath(path).open("wb") as dst:
    shutil.copyfileobj(src, dst, CHUNK)
  return path


@contextlib.contextmanager
def atomic_write(path, mode: str = "w") -> Iterator[Any]:
  """Yields a file object for writing `path`; the file appears under its name only when the block
  ends without error (module docstring). `mode` is "w" (text, utf-8) or "wb". Parent directories
  are created."""
  path = os.fspath(path)
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
  kwargs = {} if "b" in mode else {"encoding": "utf-8"}
  if is_remote(path):
    tmp = _local_tmp()
    try:
      with open(tmp, mode, **kwargs) as f:
        yield f
      upload(tmp, path)
    finally:
      os.remove(tmp)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_text(path, text: str) -> str:
  with atomic_write(path) as f:
    f.write(text)
  return os.fspath(path)


def atomic_write_bytes(path, data: bytes) -> str:
  with atomic_write(path, "wb") as f:
    f.write(data)
  return os.fspath(path)


def atomic_write_json(path, obj: Any) -> str:
  """`obj` as indented JSON (numpy scalars become floats); returns `path`."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, default=float)
  return os.fspath(path)


# ---------------------------------------------------------------------------------- moving
def copy(src, dst) -> str:
  """Copies one file, across local disks and object stores in any direction; returns `dst`."""
  src, dst = os.fspath(src), os.fspath(dst)
  if not is_remote(src):
    return upload(src, dst)
  if not is_remote(dst):
    makedirs(os.path.dirname(os.path.abspath(dst)))
    with open_read(src, "rb") as fin, open(dst, "wb") as fout:
      shutil.copyfileobj(fin, fout, CHUNK)
    return dst
  _epath(src).copy(dst, overwrite=True)
  return dst


def replace(src, dst) -> None:
  """Renames `src` to `dst`, replacing a file there. Atomic on local disks only: on object stores a
  rename is a copy and a delete."""
  if is_remote(src) or is_remote(dst):
    if not (is_remote(src) and is_remote(dst)):
      copy(src, dst)
      remove(src)
      return
    _epath(src).replace(dst)
  else:
    os.replace(src, dst)


def remove(path, missing_ok: bool = True) -> None:
  if is_remote(path):
    _epath(path).unlink(missing_ok=missing_ok)
    return
  try:
    os.remove(path)
  except FileNotFoundError:
    if not missing_ok:
      raise


def rmtree(path, missing_ok: bool = True) -> None:
  """Removes a directory tree (every object under the prefix on an object store)."""
  if is_remote(path):
    if missing_ok and not isdir(path):
      return
    _epath(path).rmtree(missing_ok=missing_ok)
  else:
    shutil.rmtree(path, ignore_errors=missing_ok)
