"""Downloading one source file into its `.part` file: `download(source, part, ...)` streams an
`https://` URL with the standard library's urllib (resuming a non-empty `.part` with an HTTP Range
request when the server honours one, else starting over; `DOWNLOAD_TIMEOUT_S` per socket
operation; a short body counted as an interruption) or fetches an `hf://owner/repo[@rev]/path`
source through `huggingface_hub` when it is installed (else as its public `/resolve/` URL), and
returns the sha256 of the whole file. A failure raises `DownloadFailed`; no retries. Reads are
`gigatok_jax.fileio.CHUNK` bytes; tqdm and huggingface_hub are imported only when used.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from gigatok_jax import fileio
from gigatok_jax.weights.env import remove_path

DOWNLOAD_TIMEOUT_S = 60.0       # per socket operation (connect, each read), not the whole download


class DownloadFailed(Exception):
  """One source failed; `kept` is True when a resumable .part file was left behind."""

  def __init__(self, message: str, kept: bool = False):
    super().__init__(message)
    self.kept = kept


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str):
  from tqdm import tqdm  # a requirement; imported here to keep the package import cheap
  return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
              unit_divisor=1024, file=sys.stderr, disable=not enabled, leave=False)


def _hash_into(h, path: str) -> None:
  """Feeds the bytes of `path` into the running hash `h` (a resumed download's first part)."""
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(fileio.CHUNK), b""):
      h.update(chunk)


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
    raise DownloadFailed(f"huggingface_hub: {type(e).__name__}: {first_line}") from e
  os.replace(got, part)
  remove_path(staging)
  return fileio.sha256_file(part)


def _download_url(url: str, part: str, *, progress: bool, label: str) -> str:
  """Streams `url` into `part` (resuming a non-empty `part` with a Range request); returns the
  sha256 of the whole file, hashed while it streams. Raises DownloadFailed."""
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
    raise DownloadFailed(f"HTTP {e.code} {e.reason}", kept=bool(have)) from e
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    raise DownloadFailed(f"cannot connect ({getattr(e, 'reason', e)})", kept=bool(have)) from e
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
        for chunk in iter(lambda: resp.read(fileio.CHUNK), b""):
          f.write(chunk)
          h.update(chunk)
          got += len(chunk)
          bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
      of = f" of {total:,}" if total is not None else ""
      raise DownloadFailed(f"interrupted after {got:,}{of} bytes ({e})", kept=True) from e
    finally:
      bar.close()
  # http.client returns a short body silently when the peer closes early: count it ourselves.
  if total is not None and got != total:
    raise DownloadFailed(f"interrupted: received {got:,} of {total:,} bytes", kept=True)
  return h.hexdigest()


def download(source: str, part: str, *, progress: bool, label: str) -> str:
  """Downloads `source` (https:// or hf://) into `part`; returns its sha256. Raises
  DownloadFailed (`kept`: a resumable `part` is left behind)."""
  if source.startswith("hf://"):
    repo_id, revision, path = _parse_hf(source)
    if _hf_hub_available():
      return _download_hf_hub(repo_id, revision, path, part, progress)
    return _download_url(_hf_public_url(repo_id, revision, path), part, progress=progress,
                         label=label)
  return _download_url(source, part, progress=progress, label=label)
