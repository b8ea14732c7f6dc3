"""Downloading one source file into its `.part` file: `download(source, part, ...)` fetches an
`hf://owner/repo[@rev]/path` source with `huggingface_hub.hf_hub_download` and an `https://` URL
with pooch, then returns the sha256 of `part`. sources.py checks that sha256 against the pins and
only then renames `part` to the final name. A failure raises `DownloadFailed`, one line.

Why libraries rather than our own HTTP code: resuming, retrying, timeouts, short-body detection
and the Hub's endpoints, tokens and offline flag are what these two maintain and test; our
hand-written urllib loop had to do each itself. Both are requirements (requirements.txt; they and
their dependencies add about 32 MB to a fresh venv, mostly huggingface_hub and hf_xet).
- `hf://`: huggingface_hub resumes an interrupted transfer with HTTP Range requests within the
  call (up to 5 retries of a dropped connection or timeout, each from the last whole 10 MB chunk
  written); a call that fails all the same leaves no partial file (huggingface_hub 2.x deletes
  it), so a rerun starts that file over. It honours HF_HUB_OFFLINE, HF_ENDPOINT and HF_TOKEN or a
  saved login. The file lands in the staging folder `<part>.hf` (`local_dir`), is moved to
  `part`, and the folder (huggingface_hub's metadata) is deleted, on failure too.
- `https://`: pooch (`pooch.create(...).fetch`, its public API) streams through requests into a
  temporary file and moves it into place only once the whole body arrived: a short body
  (requests' IncompleteRead), a timeout (`DOWNLOAD_TIMEOUT_S` per connect and per read, not for
  the whole file) or an HTTP error deletes the temporary file. `DOWNLOAD_RETRIES` further attempts
  follow, 1 s, 2 s, ... apart, each from byte 0 (pooch retries any failure, an HTTP 404 too).
  pooch does NOT resume an interrupted https download: a rerun starts that file over. Its
  temporary file lives in the staging folder `<part>.pooch`, deleted before and after each
  download. (`pooch.retrieve` takes no retry count, hence the one-file `pooch.create` registry.)
Whatever a killed process leaves (`<part>.hf`, `<part>.pooch`, an unverified `part`) is never
used: the next download deletes it first. Our pin policy and sha256 checks stay in sources.py;
neither library is given a hash. pooch, requests and huggingface_hub are imported only when a
download runs (the package import stays cheap). The offline switches (GIGATOK_OFFLINE,
HF_HUB_OFFLINE, online=False) are checked in sources.py, before this module is called at all.
"""

from __future__ import annotations

import logging
import os
import sys

from gigatok_jax import fileio
from gigatok_jax.weights.env import remove_path

DOWNLOAD_TIMEOUT_S = 60.0   # https: per connect and per read (requests' timeout), not in all
DOWNLOAD_RETRIES = 2        # https: further attempts after a failure (pooch's retry_if_failed)


class DownloadFailed(Exception):
  """One source failed (a one-line message); nothing of it is left on disk."""


def _one_line(e: BaseException) -> str:
  """`Type: first line of the message`: library errors often span several lines."""
  first_line = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first_line}"


def _parse_hf(source: str) -> tuple[str, str, str]:
  """hf://owner/repo[@revision]/path -> (repo_id, revision, path)."""
  parts = source[len("hf://"):].split("/", 2)
  if len(parts) < 3 or not all(parts):
    raise ValueError(f"bad Hugging Face source {source!r}: expected hf://owner/repo/path")
  repo, _, revision = parts[1].partition("@")
  return f"{parts[0]}/{repo}", revision or "main", parts[2]


def _download_hf(source: str, part: str, progress: bool) -> None:
  repo_id, revision, path = _parse_hf(source)
  import huggingface_hub  # pylint: disable=import-outside-toplevel  (a requirement; import is slow)
  from huggingface_hub.utils import silent_tqdm  # pylint: disable=import-outside-toplevel
  staging = f"{part}.hf"
  remove_path(staging)        # a killed earlier attempt's files
  try:
    got = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=path, revision=revision,
                                          local_dir=staging,
                                          tqdm_class=None if progress else silent_tqdm)
    os.replace(got, part)
  except Exception as e:  # noqa: BLE001 - hub errors have many types; all mean "this source failed"
    raise DownloadFailed(f"huggingface_hub: {_one_line(e)}") from e
  finally:
    remove_path(staging)      # its metadata; huggingface_hub deletes a partial file itself


def _download_https(url: str, part: str, progress: bool, label: str) -> None:
  import pooch  # pylint: disable=import-outside-toplevel  (a requirement; imported when used)
  staging = f"{part}.pooch"
  remove_path(staging)        # a killed earlier attempt's temporary file
  bar = False
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    # pooch sets `total` from Content-Length once the answer arrives, but first asks `if bar:`,
    # and a tqdm is truthy only with a non-zero total: 1 until then.
    bar = tqdm(total=1, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
               file=sys.stderr, leave=False)
  logger = pooch.get_logger()
  level = logger.level
  if not progress:
    logger.setLevel(logging.WARNING)   # quiet: no "Downloading file ..." / "will retry" lines
  try:
    got = pooch.create(path=staging, base_url="", registry={label: None}, urls={label: url},
                       retry_if_failed=DOWNLOAD_RETRIES).fetch(
        label, downloader=pooch.HTTPDownloader(progressbar=bar, chunk_size=fileio.CHUNK,
                                              timeout=DOWNLOAD_TIMEOUT_S))
    os.replace(got, part)
  except Exception as e:  # noqa: BLE001 - requests/pooch errors: all mean "this source failed"
    raise DownloadFailed(_one_line(e)) from e
  finally:
    logger.setLevel(level)
    if bar is not False:
      bar.close()
    remove_path(staging)


def download(source: str, part: str, *, progress: bool, label: str) -> str:
  """Downloads `source` (https:// or hf://) into `part`; returns its sha256. `label` is the file's
  name (progress bar, pooch's log lines). Raises DownloadFailed."""
  remove_path(part)           # never verified, never resumed: an old .part is only in the way
  if source.startswith("hf://"):
    _download_hf(source, part, progress)
  else:
    _download_https(source, part, progress, label)
  return fileio.sha256_file(part)
