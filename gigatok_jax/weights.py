"""Pretrained weights: a named artefact -> a verified, converted, cached local path.

`resolve("dinov2_vitb14")` returns the path of the converted artefact (a gigatok_jax `.safetensors`
file, or a run directory for the GigaTok releases), trying in order:

  1. the cache entry `<cache>/<name>/<output>` with its JSON record `<output>.json`. The record is
     written last, so an entry without one (a crash mid-conversion) is not a hit;
  2. the source files: a local `path=` the user gives, else `<cache>/downloads/<filename>`, else a
     download when the machine is online: `hf://owner/repo/file` sources through `huggingface_hub`
     when it is installed, every other source (and `hf://` without huggingface_hub, as its public
     `/resolve/` URL) with the standard library's `urllib`;
  3. the artefact's converter (`fn(src_paths, out_path)`), run once into a temporary sibling that is
     renamed into place; the record (sha256s, converter, time, version) follows.

The cache is `$GIGATOK_CACHE_DIR`, else `~/.cache/gigatok_jax`. Raw files stay in `downloads/` so a
newer converter needs no new download; they may be deleted once converted (the entry stays a hit).
Delete `<cache>/<name>` to convert again.

Pinning policy. A source file is pinned by a full sha256, or, for torch-hub-style files whose name
embeds the first 8 hex digits of their sha256 (`vgg16-397923af.pth`,
`pt_inception-2015-12-05-6726825d.pth`), by that prefix: it is what the publishers themselves pin
and all we can state honestly without the file in hand. A prefix (32 bits) catches corruption and
truncation, not a deliberate forgery. A download is verified before it gets its final name; a
mismatch deletes it and the error names the expected and actual sha256. A file we know no pin for
(DINOv2's hub file, GigaTok's own releases) is not downloaded unverified: the user passes the
sha256 they expect (`expected_sha256=`, `--sha256`), or `allow_unpinned=True` (`--allow_unpinned`),
whereupon the computed sha256 is printed and written into the record. Files the user supplies
(`path=`, or a file put into `downloads/`) are checked against a pin where there is one and
accepted with their sha256 recorded where there is none: naming a file is the user's own warrant;
the policy guards what comes over the network.

Offline (`GIGATOK_OFFLINE=1` or `HF_HUB_OFFLINE=1`, or `online=False`) and missing: one error line
naming the file, where to get it and the exact path to put it at.

Interrupted downloads keep `<file>.part`; the next call resumes it with an HTTP Range request when
the server honours one, else starts over. No automatic retries: a flaky link shows as one clear
error, and running the same command again continues where it stopped.

  python -m gigatok_jax.weights list
  python -m gigatok_jax.weights fetch NAME [--path=LOCAL] [--cache_dir=DIR] [--sha256=HEX]
      [--allow_unpinned]

Importing this module is cheap (standard library only): converters are dotted "module:function"
strings imported when a conversion actually runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator, Mapping, Sequence

from gigatok_jax.errors import CheckpointError, UserError

CHUNK = 1 << 20                 # bytes per read, for hashing and downloads (never a whole file)
DOWNLOAD_TIMEOUT_S = 60.0       # per socket operation (connect, each read), not the whole download
RECORD_FORMAT = "gigatok_jax.weights.v1"
_HEX = re.compile(r"[0-9a-f]+")


class WeightsError(CheckpointError):
  """An artefact cannot be resolved: missing offline, unpinned, bad hash, failed download."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file an artefact is converted from.

  `sources` are tried in order: `https://...` URLs or `hf://owner/repo[@revision]/path/in/repo`.
  `sha256` is the full hex digest where known; `sha256_prefix` the leading hex digits a
  torch-hub-style file name embeds. Neither set means unpinned (see the module docstring).
  """
  filename: str
  sources: tuple[str, ...] = ()
  sha256: str | None = None
  sha256_prefix: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if not self.filename or os.path.basename(self.filename) != self.filename:
      raise ValueError(f"SourceFile.filename must be a bare file name, got {self.filename!r}")
    for field, value, full in (("sha256", self.sha256, True),
                               ("sha256_prefix", self.sha256_prefix, False)):
      if value is not None and not (_HEX.fullmatch(value) and
                                    (len(value) == 64 if full else 0 < len(value) <= 64)):
        raise ValueError(f"{self.filename}: {field} must be lowercase hex, got {value!r}")

  @property
  def pinned(self) -> bool:
    return bool(self.sha256 or self.sha256_prefix)


@dataclasses.dataclass(frozen=True)
class Artefact:
  """A named pretrained artefact: its source files, how to convert them and what comes out.

  `converter` is "module:function" with signature `fn(src_paths: list[str], out_path: str)`, which
  must create `out_path` (a file or a directory); it is imported only when a conversion runs.
  """
  name: str
  files: tuple[SourceFile, ...]
  converter: str
  output: str
  description: str = ""
  how_to_get: str = ""

  def __post_init__(self):
    object.__setattr__(self, "files", tuple(self.files))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) or self.name == "downloads":
      raise ValueError(f"bad artefact name {self.name!r}")
    if not self.files:
      raise ValueError(f"{self.name}: an artefact needs at least one source file")
    if not re.fullmatch(r"[\w.]+:\w+", self.converter):
      raise ValueError(f"{self.name}: converter must be 'module:function', got {self.converter!r}")
    if not self.output or os.path.basename(self.output) != self.output:
      raise ValueError(f"{self.name}: output must be a bare file name, got {self.output!r}")


_REGISTRY: dict[str, Artefact] = {}


def register(artefact: Artefact, *, replace: bool = False) -> Artefact:
  """Adds an artefact to the registry (tests and users can add their own)."""
  if artefact.name in _REGISTRY and not replace:
    raise ValueError(f"artefact {artefact.name!r} is already registered (pass replace=True)")
  _REGISTRY[artefact.name] = artefact
  return artefact


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def list_artefacts() -> list[Artefact]:
  return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_artefact(name: str | Artefact) -> Artefact:
  if isinstance(name, Artefact):
    return name
  if name not in _REGISTRY:
    raise WeightsError(f"unknown pretrained artefact '{name}'; known: "
                       f"{', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


# ------------------------------------------------------------------------------------- environment

def _truthy(value: str | None) -> bool:
  return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_from_env() -> bool:
  """GIGATOK_OFFLINE, or Hugging Face's own HF_HUB_OFFLINE: no probing of the network, ever."""
  return _truthy(os.environ.get("GIGATOK_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _offline_reason() -> str:
  for var in ("GIGATOK_OFFLINE", "HF_HUB_OFFLINE"):
    if _truthy(os.environ.get(var)):
      return f"{var}={os.environ[var]}"
  return "online=False / --offline"


def default_cache_dir() -> str:
  return os.path.abspath(os.path.expanduser(
      os.environ.get("GIGATOK_CACHE_DIR") or os.path.join("~", ".cache", "gigatok_jax")))


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in CHUNK pieces (weights can be many GB)."""
  h = hashlib.sha256()
  _hash_into(h, path)
  return h.hexdigest()


def _hash_into(h, path: str) -> None:
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(CHUNK), b""):
      h.update(chunk)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


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


# --------------------------------------------------------------------------------------- downloads

class _DownloadFailed(Exception):
  """One source failed; `kept` is True when a resumable .part file was left behind."""

  def __init__(self, message: str, kept: bool = False):
    super().__init__(message)
    self.kept = kept


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str):
  from tqdm import tqdm  # a requirement; imported here to keep the module import cheap
  return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
              unit_divisor=1024, file=sys.stderr, disable=not enabled, leave=False)


def _parse_hf(source: str) -> tuple[str, str, str]:
  """hf://owner/repo[@revision]/path -> (repo_id, revision, path)."""
  parts = source[len("hf://"):].split("/", 2)
  if len(parts) < 3 or not all(parts):
    raise ValueError(f"bad Hugging Face source {source!r}: expected hf://owner/repo/path")
  repo, _, revision = parts[1].partition("@")
  return f"{parts[0]}/{repo}", revision or "main", parts[2]


def _hf_hub_available() -> bool:
  return importlib.util.find_spec("huggingface_hub") is not None


def _hf_public_url(repo_id: str, revision: str, path: str) -> str:
  endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
  return f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/" \
         f"{urllib.parse.quote(path)}"


def _download_hf_hub(repo_id: str, revision: str, path: str, part: str, progress: bool) -> str:
  """huggingface_hub into a staging folder (it resumes its own partial files there), then moved
  to `part` for verification; returns the sha256 of `part`."""
  from huggingface_hub import hf_hub_download
  staging = f"{part}.hf"
  try:
    got = hf_hub_download(repo_id=repo_id, filename=path, revision=revision, local_dir=staging)
  except Exception as e:  # noqa: BLE001 - hub errors have many types; all mean "this source failed"
    first_line = (str(e).splitlines() or [""])[0]
    raise _DownloadFailed(f"huggingface_hub: {type(e).__name__}: {first_line}") from e
  os.replace(got, part)
  _remove(staging)
  return sha256_file(part)


def _download_url(url: str, part: str, *, progress: bool, label: str) -> str:
  """Streams `url` into `part` (resuming a non-empty `part` with a Range request); returns the
  sha256 of the whole file, hashed while it streams. Raises _DownloadFailed."""
  have = os.path.getsize(part) if os.path.isfile(part) else 0
  headers = {"User-Agent": "gigatok_jax-weights"}
  if have:
    headers["Range"] = f"bytes={have}-"
  try:
    resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                  timeout=DOWNLOAD_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:     # the .part is not a prefix the server can continue: start over
      os.remove(part)
      return _download_url(url, part, progress=progress, label=label)
    raise _DownloadFailed(f"HTTP {e.code} {e.reason}", kept=bool(have)) from e
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    raise _DownloadFailed(f"cannot connect ({getattr(e, 'reason', e)})", kept=bool(have)) from e
  with resp:
    start = 0
    if have and resp.status == 206:
      m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
      if not m or int(m.group(1)) != have:
        resp.close()
        os.remove(part)
        return _download_url(url, part, progress=progress, label=label)
      start = have
    # A 200 answer to a Range request: the server does not resume; we restart from byte 0.
    length = resp.headers.get("Content-Length")
    total = start + int(length) if length and length.isdigit() else None
    h = hashlib.sha256()
    if start:
      _hash_into(h, part)
    got = start
    bar = _progress_bar(progress, total, start, label)
    try:
      with open(part, "ab" if start else "wb") as f:
        for chunk in iter(lambda: resp.read(CHUNK), b""):
          f.write(chunk)
          h.update(chunk)
          got += len(chunk)
          bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
      of = f" of {total:,}" if total is not None else ""
      raise _DownloadFailed(f"interrupted after {got:,}{of} bytes ({e})", kept=True) from e
    finally:
      bar.close()
  # http.client returns a short body silently when the peer closes early: count it ourselves.
  if total is not None and got != total:
    raise _DownloadFailed(f"interrupted: received {got:,} of {total:,} bytes", kept=True)
  return h.hexdigest()


def _download(source: str, part: str, *, progress: bool, label: str) -> str:
  if source.startswith("hf://"):
    repo_id, revision, path = _parse_hf(source)
    if _hf_hub_available():
      return _download_hf_hub(repo_id, revision, path, part, progress)
    return _download_url(_hf_public_url(repo_id, revision, path), part, progress=progress,
                         label=label)
  return _download_url(source, part, progress=progress, label=label)


# ------------------------------------------------------------------------------------ verification

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
                       f"({_offline_reason()}); {_where_from(art, sf)}, {put}")
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
  failures, kept = [], False
  for source in sf.sources:
    try:
      digest = _download(source, part, progress=progress, label=sf.filename)
    except _DownloadFailed as e:
      failures.append(f"{source}: {e}")
      kept = kept or e.kept
      continue
    try:
      kind = _check_digest(art, sf, digest, expected, f"download from {source}")
    except WeightsError as e:
      _remove(part)        # a wrong file must not be resumed from, nor ever get the final name
      failures.append(str(e))
      continue
    os.replace(part, final)
    if kind == "unpinned":
      print(f"{art.name}: {sf.filename}: sha256 {digest} (unpinned; recorded in the cache record)",
            file=sys.stderr)
    return Fetched(final, digest, source, kind)
  again = (f"; run again to resume ({os.path.getsize(part):,} bytes kept in {part})"
           if kept and os.path.isfile(part) else "")
  raise WeightsError(f"{art.name}: could not download {sf.filename}: {' | '.join(failures)}"
                     f"{again}; or download it yourself and {put}")


def _local_paths(art: Artefact, path) -> list[str | None]:
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


def _expected(art: Artefact, expected_sha256) -> dict[str, str]:
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
    if not (len(digest) == 64 and _HEX.fullmatch(digest)):
      raise WeightsError(f"{art.name}: expected sha256 must be 64 hex digits, got {digest!r}")
    out[filename] = digest
  return out


# ----------------------------------------------------------------------------- cache and resolving

def entry_paths(name: str | Artefact, cache_dir: str | None = None) -> tuple[str, str]:
  """(converted output, its JSON record) of an artefact's cache entry."""
  art = get_artefact(name)
  out = os.path.join(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())),
                     art.name, art.output)
  return out, out + ".json"


def _read_record(path: str) -> dict | None:
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
  if (record.get("artefact"), record.get("output"), record.get("converter")) != \
      (art.name, art.output, art.converter):
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
  _remove(tmp)
  try:
    fn([f.path for f in fetched], tmp)
    if not os.path.exists(tmp):
      raise WeightsError(f"{art.name}: converter {art.converter} did not write its output")
    _remove(record_path)   # the old entry stops being a hit before its output is replaced
    _remove(out)
    os.replace(tmp, out)
  finally:
    _remove(tmp)
  from gigatok_jax import __version__
  record = {
      "format": RECORD_FORMAT, "artefact": art.name, "output": art.output,
      "converter": art.converter,
      "sources": [{"filename": sf.filename, "sha256": f.sha256, "origin": f.origin,
                   "verified": f.verified} for sf, f in zip(art.files, fetched)],
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "gigatok_jax_version": __version__,
  }
  tmp_record = f"{record_path}.tmp-{os.getpid()}"
  with open(tmp_record, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
  os.replace(tmp_record, record_path)


def fetch(name: str | Artefact, *, path=None, cache_dir: str | None = None, expected_sha256=None,
          allow_unpinned: bool = False, online: bool | None = None,
          progress: bool = True) -> list[Fetched]:
  """The verified raw source files of an artefact (downloaded into `<cache>/downloads` if needed),
  without converting them."""
  art = get_artefact(name)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  with _lock(cache_dir, art.name):
    return _fetch_all(art, _local_paths(art, path), {}, cache_dir, _expected(art, expected_sha256),
                      allow_unpinned, (not offline_from_env()) if online is None else online,
                      progress)


def _fetch_all(art, locals_, local_digests, cache_dir, expected, allow_unpinned, online, progress):
  return [_fetch_one(art, sf, local=local, local_digest=local_digests.get(sf.filename),
                     cache_dir=cache_dir, expected=expected.get(sf.filename),
                     allow_unpinned=allow_unpinned, online=online, progress=progress)
          for sf, local in zip(art.files, locals_)]


def resolve(name: str | Artefact, *, path=None, cache_dir: str | None = None, expected_sha256=None,
            allow_unpinned: bool = False, online: bool | None = None, progress: bool = True) -> str:
  """The path of the converted artefact `name`: from the cache, else fetched, verified, converted
  and cached (see the module docstring).

  path: the source file(s) on local disk instead of the cache/download (a file, a directory
    holding them, or one path per source file); verified against the pins, then converted.
  expected_sha256: the sha256 the user vouches for (a hex string, or {filename: hex}).
  allow_unpinned: download a file with no known pin and record the sha256 it has.
  online: None = online unless GIGATOK_OFFLINE / HF_HUB_OFFLINE is set.
  """
  art = get_artefact(name)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  online = (not offline_from_env()) if online is None else online
  locals_ = _local_paths(art, path)
  expected = _expected(art, expected_sha256)
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
    record = _read_record(record_path)
    if record is not None and os.path.exists(out) and \
        _record_matches(art, record, expected, local_digests):
      return out
    fetched = _fetch_all(art, locals_, local_digests, cache_dir, expected, allow_unpinned, online,
                         progress)
    _convert(art, fetched, out, record_path)
  return out


# --------------------------------------------------------------------- converters of the artefacts

DINOV2_POS_GRID = 16   # GigaTok resizes DINOv2's 37x37 pos_embed once to 16x16 (224 px input)


def convert_dinov2_vitb14(src_paths: list[str], out_path: str) -> None:
  """torch hub DINOv2-B/14 -> our file, pos_embed resized to DINOV2_POS_GRID (as GigaTok does)."""
  from gigatok_jax.convert import dinov2, weight_files
  sd = weight_files.read_torch_state_dict(src_paths[0])
  config = dinov2.infer_config(sd)
  want = dinov2.DINOV2_VARIANTS["vitb14"]
  if (config.variant, config.depth, config.num_registers) != ("vitb14", want.depth, 0):
    raise WeightsError(f"{src_paths[0]}: holds DINOv2 {config.variant} with {config.depth} blocks "
                       f"and {config.num_registers} registers, not vitb14 ({want.depth} blocks)")
  flat = dinov2.convert_state_dict(sd, config)
  if config.pos_grid != DINOV2_POS_GRID:
    flat, config = dinov2.resize_flat_pos_embed(flat, config, DINOV2_POS_GRID)
  dinov2.check_fits_model(flat, config)
  weight_files.save_flat(out_path, flat, metadata={"model": dinov2.MODEL_NAME,
                                                   "config": config.to_json_dict()})


def convert_lpips_vgg16(src_paths: list[str], out_path: str) -> None:
  """torchvision VGG16 + the LPIPS heads of the installed `lpips` wheel (or src_paths[1])."""
  from gigatok_jax.convert import lpips, weight_files
  heads = src_paths[1] if len(src_paths) > 1 else lpips.default_heads_path()
  flat = lpips.convert(weight_files.read_torch_state_dict(src_paths[0]),
                       weight_files.read_torch_state_dict(heads))
  weight_files.save_flat(out_path, flat, metadata={"model": lpips.MODEL_NAME})


def convert_fid_inception(src_paths: list[str], out_path: str) -> None:
  """pytorch-fid's InceptionV3 -> our file."""
  from gigatok_jax.convert import inception, weight_files
  flat = inception.convert(weight_files.read_torch_state_dict(src_paths[0]))
  weight_files.save_flat(out_path, flat, metadata={"model": inception.MODEL_NAME})


# ------------------------------------------------------------------------------ built-in artefacts

register(Artefact(
    name="dinov2_vitb14",
    files=(SourceFile("dinov2_vitb14_pretrain.pth", (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",)),),
    converter="gigatok_jax.weights:convert_dinov2_vitb14", output="dinov2_vitb14.safetensors",
    description="DINOv2 ViT-B/14 (torch hub), pos_embed resized to 16x16: the semantic teacher",
    how_to_get="the facebookresearch/dinov2 torch hub file; no sha256 is published with it"))
register(Artefact(
    name="lpips_vgg16",
    files=(SourceFile("vgg16-397923af.pth",
                      ("https://download.pytorch.org/models/vgg16-397923af.pth",),
                      sha256_prefix="397923af"),),
    converter="gigatok_jax.weights:convert_lpips_vgg16", output="lpips_vgg16.safetensors",
    description="LPIPS-VGG: torchvision VGG16 trunk + the lpips v0.1 heads (from the lpips wheel)",
    how_to_get="torchvision's ImageNet VGG16; the heads need `pip install --no-deps lpips==0.1.4`"))
register(Artefact(
    name="fid_inception",
    files=(SourceFile("pt_inception-2015-12-05-6726825d.pth", (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",), sha256_prefix="6726825d"),),
    converter="gigatok_jax.weights:convert_fid_inception", output="fid_inception.safetensors",
    description="pytorch-fid's InceptionV3 (FID / IS features)",
    how_to_get="the pytorch-fid GitHub release fid_weights"))

_GIGATOK_REPO = "YuuTennYi/GigaTok"   # unverified: a fork points there (gigatok_spec.md section 6)
_GIGATOK_HINT = ("also linked (Google Drive) from the GigaTok README at "
                 "github.com/SilentView/GigaTok; the Hugging Face repo and file name are "
                 "unverified and no sha256 is known")


def _gigatok(name: str, filename: str, kind: str, description: str) -> None:
  register(Artefact(
      name=name, files=(SourceFile(filename, (f"hf://{_GIGATOK_REPO}/{filename}",)),),
      converter=f"gigatok_jax.convert.gigatok:convert_{kind}_file", output="run",
      description=description, how_to_get=_GIGATOK_HINT))


for _name, _file, _desc in (
    ("gigatok_ss", "VQ_SS256_e100.pt", "GigaTok S-S tokenizer (136M)"),
    ("gigatok_sb", "VQ_SB256_e200.pt", "GigaTok S-B tokenizer (232M)"),
    ("gigatok_bl", "VQ_BL256_e200.pt", "GigaTok B-L tokenizer (622M)"),
    ("gigatok_bl_dino_disc", "VQ_BL256_dino_disc.pt", "GigaTok B-L tokenizer, DINO discriminator"),
    ("gigatok_xlxxl", "VQ_XLXXL256_e300.pt", "GigaTok XL-XXL tokenizer (2.9B)")):
  _gigatok(_name, _file, "tokenizer", _desc)
for _name, _file, _desc in (
    ("gigatok_gpt_b_ss", "GPT_B256_e300_VQ_SS.pt", "GPT-B on the S-S tokenizer's codes"),
    ("gigatok_gpt_b_sb", "GPT_B256_e300_VQ_SB.pt", "GPT-B on the S-B tokenizer's codes"),
    ("gigatok_gpt_b_bl", "GPT_B256_e300_VQ_BL.pt", "GPT-B on the B-L tokenizer's codes"),
    ("gigatok_gpt_xl_bl", "GPT_XL256_e300_VQ_BL.pt", "GPT-XL on the B-L tokenizer's codes"),
    ("gigatok_gpt_xxl_bl", "GPT_XXL256_e300_VQ_BL.pt", "GPT-XXL on the B-L tokenizer's codes"),
    ("gigatok_gpt_xxl_xlxxl", "GPT_XXL256_e300_VQ_XLXXL.pt",
     "GPT-XXL on the XL-XXL tokenizer's codes")):
  _gigatok(_name, _file, "gpt", _desc)
del _name, _file, _desc


# --------------------------------------------------------------------------------------------- CLI

def _pin_label(art: Artefact) -> str:
  kinds = {"sha256" if sf.sha256 else f"sha256 {sf.sha256_prefix}..." if sf.sha256_prefix else
           "unpinned" for sf in art.files}
  return ", ".join(sorted(kinds))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.weights",
      description="Fetch, verify and convert pretrained weights into the gigatok_jax cache "
                  f"(default {default_cache_dir()}, or $GIGATOK_CACHE_DIR).")
  sub = parser.add_subparsers(dest="command", required=True)
  p_list = sub.add_parser("list", help="known artefacts, their pins, whether they are cached")
  p_list.add_argument("--cache_dir", default=None)
  p_fetch = sub.add_parser("fetch", help="resolve one artefact and print its converted path")
  p_fetch.add_argument("name")
  p_fetch.add_argument("--path", action="append", default=None,
                       help="local source file (or a directory holding the files); repeat for "
                            "several files")
  p_fetch.add_argument("--cache_dir", default=None)
  p_fetch.add_argument("--sha256", default=None, help="the sha256 you expect of the source file")
  p_fetch.add_argument("--allow_unpinned", action="store_true",
                       help="download a file with no known sha256 and record the one it has")
  p_fetch.add_argument("--offline", action="store_true",
                       help="never download (as GIGATOK_OFFLINE=1)")
  p_fetch.add_argument("--quiet", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  try:
    if args.command == "list":
      for art in list_artefacts():
        out, record = entry_paths(art, args.cache_dir)
        cached = "cached" if os.path.exists(out) and _read_record(record) else "-"
        print(f"{art.name:24s} {cached:7s} {_pin_label(art):20s} {art.description}")
      return 0
    path = args.path[0] if args.path and len(args.path) == 1 else args.path
    print(resolve(args.name, path=path, cache_dir=args.cache_dir, expected_sha256=args.sha256,
                  allow_unpinned=args.allow_unpinned, online=False if args.offline else None,
                  progress=not args.quiet))
    return 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
