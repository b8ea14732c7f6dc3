"""The two storage layouts of the tokenizer's transformer stacks (`model.scan_layers`).

Unrolled (the reference's naming, one entry per layer):  <stack>.transformer.<i>.<rest>
Scanned (one entry per parameter, depth first):           <stack>.layers.<rest>    (L, ...)

Works on flat dicts keyed by dotted names (`tree_names.flatten`), whose values are arrays or
shape tuples. The converters speak the unrolled layout (it is the reference's); a scanned model's
parameters pass through `to_scanned` on import and `to_unrolled` on export.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_UNROLLED = re.compile(r"^((?:.*\.)?stack)\.transformer\.(\d+)\.(.+)$")
_SCANNED = re.compile(r"^((?:.*\.)?stack)\.layers\.(.+)$")


def is_scanned(flat: Mapping[str, Any]) -> bool:
  return any(_SCANNED.match(name) for name in flat)


def to_unrolled(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned entries split into one per layer (arrays sliced, shapes lose their first axis)."""
  out: dict[str, Any] = {}
  for name, value in flat.items():
    m = _SCANNED.match(name)
    if not m:
      out[name] = value
      continue
    stack, rest = m.groups()
    depth = value[0] if isinstance(value, tuple) else value.shape[0]
    for i in range(depth):
      out[f"{stack}.transformer.{i}.{rest}"] = value[1:] if isinstance(value, tuple) else value[i]
  return out


def to_scanned(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Per-layer entries stacked along a new first axis (layers 0..L-1 must all be present)."""
  out: dict[str, Any] = {}
  groups: dict[str, dict[int, Any]] = {}
  for name, value in flat.items():
    m = _UNROLLED.match(name)
    if not m:
      out[name] = value
      continue
    stack, i, rest = m.groups()
    groups.setdefault(f"{stack}.layers.{rest}", {})[int(i)] = value
  for name, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"{name}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
    values = [layers[i] for i in range(len(layers))]
    out[name] = ((len(values),) + values[0] if isinstance(values[0], tuple)
                 else np.stack([np.asarray(v) for v in values]))
  return out


def mismatch_hint(stored_names, wanted_names) -> str:
  """' (... set model.scan_layers=X)' when two parameter name sets differ in layout, else ''."""
  stored = is_scanned(dict.fromkeys(stored_names))
  if stored == is_scanned(dict.fromkeys(wanted_names)):
    return ""
  return (f" (the stored weights keep layer stacks {'depth-first' if stored else 'per layer'}, "
          f"this model {'per layer' if stored else 'depth-first'}: set "
          f"--config.model.scan_layers={stored} to read them)")
