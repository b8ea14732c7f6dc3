"""Getting an artefact's source files verified, the pinning policy in code: `fetch_files` takes each
file from the local path the user names, else `<cache>/downloads/<filename>`, else downloads it
(when online, and only when it is pinned, expected by the user or allowed unpinned) and checks it
against its pins and the user's expected sha256 before it gets its final name, returning `Fetched`
records (path, sha256, origin, how it was verified); every refusal is one `WeightsError` line that
names the file, where to get it and where to put it. `local_paths` and `expected_digests` turn the
user's `path=` and `expected_sha256=` arguments into one entry per source file.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from gigatok_jax.fileio import sha256_file
from gigatok_jax.weights.download import DownloadFailed, download
from gigatok_jax.weights.env import offline_reason, remove_path
from gigatok_jax.weights.registry import HEX, Artefact, SourceFile, WeightsError


@dataclasses.dataclass(frozen=True)
class Fetched:
  """A verified source file: where it is, its sha256, where it came from and how it was checked
  ('sha256', 'expected_sha256', 'sha256_prefix' or 'unpinned')."""
  path: str
  sha256: str
  origin: str
  verified: str


def _check_digest(art: Artefact, sf: SourceFile, actual: str, expected: str | None,
                  where: str) -> str:
  """Raises WeightsError naming expected and actual sha256 if a pin is broken; returns the kind."""
  for label, want in (("pinned", sf.sha256), ("expected (--sha256)", expected)):
    if want and actual != want:
      raise WeightsError(f"{art.name}: {where}: sha256 mismatch for {sf.filename}: {label} sha256 "
                         f"{want}, actual sha256 {actual}")
  if sf.sha256_prefix and not actual.startswith(sf.sha256_prefix):
    raise WeightsError(f"{art.name}: {where}: sha256 mismatch for {sf.filename}: expected a sha256 "
                       f"starting with {sf.sha256_prefix} (pinned by its file name), actual sha256 "
                       f"{actual}")
  return ("sha256" if sf.sha256 else "expected_sha256" if expected else
          "sha256_prefix" if sf.sha256_prefix else "unpinned")


def _where_from(art: Artefact, sf: SourceFile) -> str:
  urls = ", ".join(sf.sources) or "no public source known"
  return f"get it from {urls}" + (f" ({art.how_to_get})" if art.how_to_get else "")


def _fetch_one(art: Artefact, sf: SourceFile, *, local: str | None, local_digest: str | None,
               cache_dir: str, expected: str | None, allow_unpinned: bool, online: bool,
               progress: bool) -> Fetched:
  if local is not None:
    local = os.path.abspath(os.path.expanduser(local))
    if not os.path.isfile(local):
      raise WeightsError(f"{art.name}: {local} is not a file (expected {sf.filename})")
    digest = local_digest or sha256_file(local)
    return Fetched(local, digest, local, _check_digest(art, sf, digest, expected, local))
  final = os.path.join(cache_dir, "downloads", sf.filename)
  if os.path.isfile(final):
    digest = sha256_file(final)
    kind = _check_digest(art, sf, digest, expected, f"{final} (delete it to download again)")
    return Fetched(final, digest, final, kind)
  put = f"put it at {final} (or pass path= / --path=FILE)"
  if not online:
    raise WeightsError(f"{art.name}: {sf.filename} is not in the cache and downloads are off "
                       f"({offline_reason()}); {_where_from(art, sf)}, {put}")
  if not sf.sources:
    raise WeightsError(f"{art.name}: {sf.filename} has no download source; "
                       f"{_where_from(art, sf)}, {put}")
  if not (sf.pinned or expected or allow_unpinned):
    raise WeightsError(f"{art.name}: {sf.filename} has no pinned sha256, so it is not downloaded "
                       "unverified: pass the sha256 you expect (expected_sha256= / --sha256=HEX) "
                       "or allow_unpinned=True / --allow_unpinned (its sha256 is then recorded); "
                       "or "
                       f"{_where_from(art, sf)}, {put}")
  os.makedirs(os.path.dirname(final), exist_ok=True)
  part = final + ".part"
  failures = []
  for source in sf.sources:
    try:
      digest = download(source, part, progress=progress, label=sf.filename)
    except DownloadFailed as e:
      failures.append(f"{source}: {e}")
      continue
    try:
      kind = _check_digest(art, sf, digest, expected, f"download from {source}")
    except WeightsError as e:
      remove_path(part)    # a wrong file must never get the final name
      failures.append(str(e))
      continue
    os.replace(part, final)
    if kind == "unpinned":
      print(f"{art.name}: {sf.filename}: sha256 {digest} (unpinned; recorded in the cache record)",
            file=sys.stderr)
    return Fetched(final, digest, source, kind)
  raise WeightsError(f"{art.name}: could not download {sf.filename}: {' | '.join(failures)}; "
                     f"or download it yourself and {put}")


def fetch_files(art: Artefact, locals_, local_digests, cache_dir: str, expected,
                allow_unpinned: bool, online: bool, progress: bool) -> list[Fetched]:
  """Every source file of `art`, verified: `locals_` from `local_paths`, `local_digests` the
  sha256s of those already hashed ({filename: hex}), `expected` from `expected_digests`."""
  return [_fetch_one(art, sf, local=local, local_digest=local_digests.get(sf.filename),
                     cache_dir=cache_dir, expected=expected.get(sf.filename),
                     allow_unpinned=allow_unpinned, online=online, progress=progress)
          for sf, local in zip(art.files, locals_)]


def local_paths(art: Artefact, path) -> list[str | None]:
  """path=None | a file (one-file artefact) | a directory holding the files | one path per file."""
  n = len(art.files)
  if path is None:
    return [None] * n
  if isinstance(path, (str, os.PathLike)):
    path = os.fspath(path)
    if os.path.isdir(path):
      return [os.path.join(path, sf.filename) for sf in art.files]
    if n == 1:
      return [path]
    names = ", ".join(sf.filename for sf in art.files)
    raise WeightsError(f"{art.name}: needs {n} files ({names}): pass a directory holding them or "
                       "one path per file")
  paths = [os.fspath(p) for p in path]
  if len(paths) != n:
    raise WeightsError(f"{art.name}: {len(paths)} paths given for {n} source files")
  return paths


def expected_digests(art: Artefact, expected_sha256) -> dict[str, str]:
  """expected_sha256=None | one hex digest (one-file artefact) | {filename: hex digest}."""
  if expected_sha256 is None:
    return {}
  if isinstance(expected_sha256, str):
    if len(art.files) != 1:
      raise WeightsError(f"{art.name}: has {len(art.files)} source files; pass expected_sha256 as "
                         "{filename: sha256}")
    expected_sha256 = {art.files[0].filename: expected_sha256}
  names = {sf.filename for sf in art.files}
  out = {}
  for filename, digest in expected_sha256.items():
    digest = digest.strip().lower()
    if filename not in names:
      raise WeightsError(f"{art.name}: expected_sha256 for unknown file {filename!r}")
    if not (len(digest) == 64 and HEX.fullmatch(digest)):
      raise WeightsError(f"{art.name}: expected sha256 must be 64 hex digits, got {digest!r}")
    out[filename] = digest
  return out
