"""The command line, `python -m gigatok_jax.weights list | fetch NAME [...]`: `list` prints every
known artefact with whether it is cached and how it is pinned; `fetch` resolves one artefact and
prints its converted path. A `UserError` (every `WeightsError`) is one `error:` line on stderr and
exit status 2, no traceback. `__main__.py` only calls `main`, so the package can re-export it
without `python -m` importing the entry module twice.
"""

from __future__ import annotations

import argparse
import os
import sys

from gigatok_jax.errors import UserError
from gigatok_jax.weights.cache import entry_paths, read_record, resolve
from gigatok_jax.weights.env import default_cache_dir
from gigatok_jax.weights.registry import Artefact, list_artefacts


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
        cached = "cached" if os.path.exists(out) and read_record(record) else "-"
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
