"""The cache of converted artefacts and the two entry points on it: `resolve` (a hit is the entry
`<cache>/<name>/<output>` with a matching JSON record `<output>.json`; a miss fetches the verified
source files, runs the artefact's converter into a temporary sibling renamed into place, then
writes the record atomically, last) and `fetch` (the verified source files only). A per-artefact
file lock (`<cache>/.locks/<name>.lock`) keeps two processes sharing a cache from writing the same
entry or `.part` file at once; `entry_paths` and `read_record` let callers inspect an entry.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from typing import Callable, Iterator, Mapping, Sequence

from gigatok_jax.fileio import atomic_write, sha256_file
from gigatok_jax.weights.env import cache_root, offline_from_env, remove_path
from gigatok_jax.weights.registry import Artefact, WeightsError, get_artefact
from gigatok_jax.weights.sources import Fetched, expected_digests, fetch_files, local_paths

RECORD_FORMAT = "gigatok_jax.weights.v1"


@contextlib.contextmanager
def _lock(cache_dir: str, name: str) -> Iterator[None]:
  """One process per artefact at a time (e.g. several hosts sharing a cache on one filesystem);
  without it two writers could interleave bytes in the same .part file."""
  try:
    import fcntl
  except ImportError:  # pragma: no cover - not POSIX
    yield
    return
  os.makedirs(os.path.join(cache_dir, ".locks"), exist_ok=True)
  with open(os.path.join(cache_dir, ".locks", f"{name}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def entry_paths(name: str | Artefact, cache_dir: str | None = None) -> tuple[str, str]:
  """(converted output, its JSON record) of an artefact's cache entry."""
  art = get_artefact(name)
  out = os.path.join(cache_root(cache_dir), art.name, art.output)
  return out, out + ".json"


def read_record(path: str) -> dict | None:
  """The cache record at `path`, or None when it is missing, unreadable or not of RECORD_FORMAT."""
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _record_matches(art: Artefact, record: dict, expected: Mapping[str, str],
                    local_digests: Mapping[str, str]) -> bool:
  """A hit: same artefact, output and converter, and recorded sources that satisfy today's pins,
  the user's expected sha256s and the local files the user points at."""
  if (record.get("artefact"), record.get("output")) != (art.name, art.output) or \
      record.get("converter") not in (art.converter, *art.former_converters):
    return False
  recorded = {s.get("filename"): s.get("sha256") for s in record.get("sources", [])
              if isinstance(s, dict)}
  for sf in art.files:
    digest = recorded.get(sf.filename)
    if not isinstance(digest, str):
      return False
    for want in (sf.sha256, expected.get(sf.filename), local_digests.get(sf.filename)):
      if want and digest != want:
        return False
    if sf.sha256_prefix and not digest.startswith(sf.sha256_prefix):
      return False
  return True


def _load_converter(art: Artefact) -> Callable[[list[str], str], None]:
  module_name, _, fn_name = art.converter.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
      raise WeightsError(f"{art.name}: converter module {module_name} is not available "
                         "(is gigatok_jax complete and up to date?)") from e
    raise
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise WeightsError(f"{art.name}: converter {art.converter} does not exist")
  return fn


def _convert(art: Artefact, fetched: Sequence[Fetched], out: str, record_path: str) -> None:
  """Runs the converter into a temporary sibling, renames it into place, then writes the record."""
  fn = _load_converter(art)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = f"{out}.tmp-{os.getpid()}"
  remove_path(tmp)
  try:
    fn([f.path for f in fetched], tmp)
    if not os.path.exists(tmp):
      raise WeightsError(f"{art.name}: converter {art.converter} did not write its output")
    remove_path(record_path)   # the old entry stops being a hit before its output is replaced
    remove_path(out)
    os.replace(tmp, out)
  finally:
    remove_path(tmp)
  from gigatok_jax.version import VERSION  # pylint: disable=import-outside-toplevel
  record = {
      "format": RECORD_FORMAT, "artefact": art.name, "output": art.output,
      "converter": art.converter,
      "sources": [{"filename": sf.filename, "sha256": f.sha256, "origin": f.origin,
                   "verified": f.verified} for sf, f in zip(art.files, fetched)],
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "gigatok_jax_version": VERSION,
  }
  with atomic_write(record_path) as f:   # a temporary sibling renamed into place
    json.dump(record, f, indent=2)
    f.write("\n")


def fetch(name: str | Artefact, *, path=None, cache_dir: str | None = None, expected_sha256=None,
          allow_unpinned: bool = False, online: bool | None = None,
          progress: bool = True) -> list[Fetched]:
  """The verified raw source files of an artefact (downloaded into `<cache>/downloads` if needed),
  without converting them."""
  art = get_artefact(name)
  cache_dir = cache_root(cache_dir)
  with _lock(cache_dir, art.name):
    return fetch_files(art, local_paths(art, path), {}, cache_dir,
                       expected_digests(art, expected_sha256), allow_unpinned,
                       (not offline_from_env()) if online is None else online, progress)


def resolve(name: str | Artefact, *, path=None, cache_dir: str | None = None, expected_sha256=None,
            allow_unpinned: bool = False, online: bool | None = None, progress: bool = True) -> str:
  """The path of the converted artefact `name`: from the cache, else fetched, verified, converted
  and cached (see the gigatok_jax.weights package docstring).

  path: the source file(s) on local disk instead of the cache/download (a file, a directory
    holding them, or one path per source file); verified against the pins, then converted.
  expected_sha256: the sha256 the user vouches for (a hex string, or {filename: hex}).
  allow_unpinned: download a file with no known pin and record the sha256 it has.
  online: None = online unless GIGATOK_OFFLINE / HF_HUB_OFFLINE is set.
  """
  art = get_artefact(name)
  cache_dir = cache_root(cache_dir)
  online = (not offline_from_env()) if online is None else online
  locals_ = local_paths(art, path)
  expected = expected_digests(art, expected_sha256)
  out, record_path = entry_paths(art, cache_dir)
  with _lock(cache_dir, art.name):
    # Local files are hashed once, for the hit check and the verification alike.
    local_digests = {}
    for sf, p in zip(art.files, locals_):
      if p is not None:
        if not os.path.isfile(p):
          raise WeightsError(f"{art.name}: {os.path.abspath(p)} is not a file (expected "
                             f"{sf.filename})")
        local_digests[sf.filename] = sha256_file(p)
    record = read_record(record_path)
    if record is not None and os.path.exists(out) and \
        _record_matches(art, record, expected, local_digests):
      return out
    fetched = fetch_files(art, locals_, local_digests, cache_dir, expected, allow_unpinned, online,
                          progress)
    _convert(art, fetched, out, record_path)
  return out
