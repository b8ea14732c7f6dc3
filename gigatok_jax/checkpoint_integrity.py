"""Checkpoint integrity: a sha256 manifest of every file of a saved step, verified before restore.

Orbax and TensorStore do not notice flipped bytes: a checkpoint data file overwritten with 4 KB of
random bytes (size kept) restored without error and trained on as NaN. So after Orbax commits a
step, process 0 reads the step's files back and writes

  <checkpoints>/<step>/checksums.json   {"step": N, "files": {"state/d/ab12..": {"size", "sha256"}}}

and a restore first checks every listed file (present, same size, same sha256). A step whose
check fails, or that never got its manifest (killed between Orbax's commit and the manifest), is
not used: the restore falls back to the newest step that passes, and a training run moves the bad
step directory aside (below) so that the step can be saved again.

Set aside, never deleted: `<checkpoints>/set_aside/<step>.<reason>.<UTC time>`; reason is
`damaged` (a check failed) or `incomplete` (no commit marker, metadata item or manifest). Orbax
only lists directories named like a step, so it never sees them. Delete them once inspected.

Every path goes through etils `epath`, so this works on gs:// as on local disks.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from etils import epath

MANIFEST = "checksums.json"
SET_ASIDE = "set_aside"
CHUNK = 1 << 22   # bytes per read while hashing


def _files(step_dir: epath.Path) -> list[str]:
  """Paths (relative to `step_dir`, '/'-separated, sorted) of every file in it but the manifest."""
  out = []
  stack = [(step_dir, "")]
  while stack:
    directory, prefix = stack.pop()
    for child in directory.iterdir():
      rel = f"{prefix}{child.name}"
      if child.is_dir():
        stack.append((child, rel + "/"))
      elif rel != MANIFEST and not rel.startswith(MANIFEST + ".tmp"):
        out.append(rel)
  return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
  """(size in bytes, hex sha256) of one file, read in chunks."""
  digest, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while block := f.read(CHUNK):
      digest.update(block)
      size += len(block)
  return size, digest.hexdigest()


def write_manifest(step_dir: epath.Path, step: int) -> None:
  """Hashes every file of a committed step and writes its manifest (temp name, then rename)."""
  files = {}
  for rel in _files(step_dir):
    size, sha = _digest(step_dir / rel)
    files[rel] = {"size": size, "sha256": sha}
  tmp = step_dir / f"{MANIFEST}.tmp"
  tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
  tmp.rename(step_dir / MANIFEST)


def has_manifest(step_dir: epath.Path) -> bool:
  return (step_dir / MANIFEST).exists()


def verify(step_dir: epath.Path) -> str | None:
  """None if every file in the manifest is intact, else what is wrong with the first bad file."""
  try:
    manifest = json.loads((step_dir / MANIFEST).read_text())
    files: dict[str, Any] = manifest["files"]
  except FileNotFoundError:
    return f"{MANIFEST} is missing"
  except (ValueError, KeyError, TypeError) as e:
    return f"{MANIFEST} is unreadable ({type(e).__name__})"
  for rel, want in files.items():
    path = step_dir / rel
    if not path.exists():
      return f"{rel} is missing"
    try:
      size, sha = _digest(path)
    except OSError as e:
      return f"{rel} is unreadable ({e.strerror or type(e).__name__})"
    if size != want.get("size"):
      return f"{rel} has {size} bytes, {want.get('size')} were saved"
    if sha != want.get("sha256"):
      return f"{rel} has changed since it was saved (sha256 differs)"
  return None


def set_aside(step_dir: epath.Path, reason: str) -> epath.Path:
  """Moves a step directory to `<checkpoints>/set_aside/<step>.<reason>.<UTC time>`; returns it."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  target_dir = step_dir.parent / SET_ASIDE
  target_dir.mkdir(parents=True, exist_ok=True)
  target = target_dir / f"{step_dir.name}.{reason}.{stamp}"
  try:
    step_dir.rename(target)
  except OSError:
    # Object stores (gs://) may not rename directories: copy file by file, then delete.
    for rel in _files(step_dir) + ([MANIFEST] if has_manifest(step_dir) else []):
      (target / rel).parent.mkdir(parents=True, exist_ok=True)
      (step_dir / rel).copy(target / rel)
    step_dir.rmtree()
  return target
