"""Where evaluation results go: <workdir>/eval/<name>.json, written by process 0."""

from __future__ import annotations

import json
import os


def save(workdir: str, name: str, result: dict) -> str:
  """Writes `result` (numpy scalars become floats) as <workdir>/eval/<name>.json; returns the path."""
  out = os.path.join(workdir, "eval", f"{name}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=float)
  os.replace(out + ".tmp", out)
  return out
