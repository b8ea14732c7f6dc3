"""Pretrained weights: a named artefact -> a verified, converted, cached local path.

`resolve("dinov2_vitb14")` returns the path of the converted artefact (a gigatok_jax `.safetensors`
file, or a run directory for the GigaTok releases), trying in order:

  1. the cache entry `<cache>/<name>/<output>` with its JSON record `<output>.json`. The record is
     written last, so an entry without one (a crash mid-conversion) is not a hit;
  2. the source files: a local `path=` the user gives, else `<cache>/downloads/<filename>`, else a
     download when the machine is online: `hf://owner/repo[@rev]/file` sources through
     `huggingface_hub.hf_hub_download`, `https://` URLs through pooch (download.py says why);
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

Interrupted downloads: huggingface_hub resumes an `hf://` file with HTTP Range requests within
the call; pooch retries an `https://` file from byte 0 (`DOWNLOAD_RETRIES` more times) and never
resumes. A download that fails all the same leaves no file behind (a rerun starts it over) and is
one error line.

  python -m gigatok_jax.weights list
  python -m gigatok_jax.weights fetch NAME [--path=LOCAL] [--cache_dir=DIR] [--sha256=HEX]
      [--allow_unpinned]

Importing this package is cheap (standard library only): converters are dotted "module:function"
strings imported when a conversion actually runs, pooch and huggingface_hub when a download does.

The package, one job a module: registry.py (artefacts, pins, the built-in entries), env.py (cache
dir, offline switches), download.py (one file through huggingface_hub or pooch), sources.py
(the pinning policy: local, cached or downloaded source files, verified), cache.py (lock, records,
conversion, `resolve` / `fetch`), converters.py (the built-in converters), cli.py (the command
line). This module re-exports their public names.
"""

from __future__ import annotations

from gigatok_jax import fileio
from gigatok_jax.fileio import sha256_file
from gigatok_jax.weights import download
from gigatok_jax.weights.cache import RECORD_FORMAT, entry_paths, fetch, read_record, resolve
from gigatok_jax.weights.cli import main
from gigatok_jax.weights.converters import (DINOV2_POS_GRID, convert_dino_vits16,
                                            convert_dinov2_vitb14, convert_fid_inception,
                                            convert_lpips_vgg16)
from gigatok_jax.weights.env import default_cache_dir, offline_from_env
from gigatok_jax.weights.registry import (Artefact, SourceFile, WeightsError, get_artefact,
                                          list_artefacts, register, unregister)
from gigatok_jax.weights.sources import Fetched

__all__ = [
    "Artefact", "DINOV2_POS_GRID", "Fetched", "RECORD_FORMAT", "SourceFile", "WeightsError",
    "convert_dino_vits16", "convert_dinov2_vitb14", "convert_fid_inception", "convert_lpips_vgg16", "default_cache_dir",
    "entry_paths", "fetch", "get_artefact", "list_artefacts", "main", "offline_from_env",
    "read_record", "register", "resolve", "sha256_file", "unregister",
]


def __getattr__(name: str):
  """CHUNK (bytes per read, gigatok_jax.fileio.CHUNK), DOWNLOAD_TIMEOUT_S and DOWNLOAD_RETRIES
  (download.py) are read live from the module that uses them: to change one, set it there, not
  here."""
  if name == "CHUNK":
    return fileio.CHUNK
  if name in ("DOWNLOAD_TIMEOUT_S", "DOWNLOAD_RETRIES"):
    return getattr(download, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
