"""Reading PyTorch weight files and writing/reading our flat parameter files, strictly.

Our converted weights are `.safetensors` files of flat "a.b.c" parameter paths (the nnx state path
of each parameter joined with dots) plus string metadata (which model, its config as JSON). They
load into an nnx module only if every parameter is present with the right shape and nothing is left
over; otherwise a CheckpointError lists the names (and shapes) at fault.

PyTorch `.pt/.pth/.bin` files are read with `torch.load(weights_only=True)`, which never unpickles
code (one loader, `torch_load`, for bare state dicts and training checkpoints alike);
`.safetensors` files need no torch at all.

Local files only (converters and converted weights: teachers, FID Inception): a gs:// path is
refused with one line asking for a local copy, where Python's `open` would otherwise report a
missing file or create a local `gs:` folder.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax import fileio
from gigatok_jax.errors import CheckpointError

FORMAT = "gigatok_jax.flat.v1"


def _local(path: str) -> str:
  return fileio.local_only(path, "weight conversion and converted weight files")


def torch_load(path: str, *, no_torch: str, unreadable: str, allowed_globals: tuple = ()) -> Any:
  """`torch.load(path, weights_only=True)` on the CPU: the one loader of PyTorch pickles.

  `no_torch` / `unreadable` are the CheckpointError messages (formatted with `path`, and `e` for
  the torch error) of each caller; `allowed_globals` are classes the pickle may hold besides
  tensors (e.g. the `argparse.Namespace` of a training checkpoint's `args`).
  """
  try:
    import torch
  except ImportError as e:  # pragma: no cover - torch is a test dependency here
    raise CheckpointError(no_torch.format(path=path)) from e
  try:
    with torch.serialization.safe_globals(list(allowed_globals)):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
    raise CheckpointError(unreadable.format(path=path, e=e)) from e


def tensor_to_numpy(value: Any) -> Any:
  """A torch tensor as numpy (floating tensors as float32); anything else unchanged."""
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().to("cpu")
    return value.float().numpy() if value.is_floating_point() else value.numpy()
  return value


def read_torch_state_dict(path: str, key: str | None = None) -> dict[str, np.ndarray]:
  """A PyTorch state dict (or the sub-dict `key` of a training checkpoint) as float32 numpy arrays.

  `key` picks e.g. "model" or "ema" from `{"model": ..., "ema": ..., "optimizer": ...}`; with
  key=None a file whose values are all tensors is taken as is.
  """
  _local(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"weight file not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    raw: Mapping[str, Any] = load_file(path)
  else:
    raw = torch_load(path, no_torch="{path}: reading a PyTorch pickle needs `pip install torch`; "
                     "or convert it to .safetensors elsewhere",
                     unreadable="{path}: not a readable PyTorch weights file ({e})")
  if key is not None:
    if not isinstance(raw, Mapping) or key not in raw:
      have = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
      raise CheckpointError(f"{path}: has no entry '{key}' (top-level entries: {have})")
    raw = raw[key]
  if not isinstance(raw, Mapping):
    raise CheckpointError(f"{path}: expected a state dict, found {type(raw).__name__}")
  out = {}
  for name, value in raw.items():
    value = tensor_to_numpy(value)
    if not isinstance(value, np.ndarray):
      raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, not a tensor "
                            f"(is this a training checkpoint? pick its weights with key='model')")
    out[name] = value
  return out


def read_checkpoint(path: str) -> dict[str, Any]:
  """A training checkpoint `.pt`/`.pth` (the `args` Namespace allowed) or a `.safetensors` file,
  as nested dicts of float32 numpy arrays (ints kept, e.g. `steps`)."""
  _local(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    return read_torch_state_dict(path)
  raw = torch_load(path, no_torch="{path}: reading a PyTorch checkpoint needs `pip install torch` "
                   "(CPU build is enough)",
                   unreadable="{path}: not a readable PyTorch checkpoint ({e})",
                   allowed_globals=(argparse.Namespace,))

  def nested(x):
    return {k: nested(v) for k, v in x.items()} if isinstance(x, Mapping) else tensor_to_numpy(x)
  if not isinstance(raw, Mapping):
    raise CheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
  return {k: nested(v) for k, v in raw.items()}


def fit_problems(have: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]],
                 limit: int = 20) -> list[str]:
  """Messages for names in `want` but not `have`, the reverse, and shape mismatches (empty = fits).

  The one strict name-and-shape check of every converter and of `assign_flat`.
  """
  def listed(names):
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"
  missing = sorted(set(want) - set(have))
  unused = sorted(set(have) - set(want))
  bad = [f"{k}: file {tuple(have[k])} vs expected {tuple(want[k])}"
         for k in sorted(set(have) & set(want)) if tuple(have[k]) != tuple(want[k])]
  problems = []
  if missing:
    problems.append(f"missing {listed(missing)}")
  if unused:
    problems.append(f"unexpected {listed(unused)}")
  if bad:
    problems.append("wrong shapes: " + "; ".join(bad[:limit]))
  return problems


def flatten_module(module: nnx.Module) -> dict[str, np.ndarray]:
  """{ "a.b.c": array } for every nnx.Param of `module`."""
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  return {".".join(str(p) for p in path): np.asarray(var[...]) for path, var in flat}


def assign_flat(module: nnx.Module, flat: Mapping[str, np.ndarray], source: str) -> None:
  """Copies `flat` into `module`'s parameters in place; strict about names and shapes."""
  params = {".".join(str(p) for p in path): var
            for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}
  problems = fit_problems({k: np.shape(v) for k, v in flat.items()},
                          {k: var[...].shape for k, var in params.items()})
  if problems:
    raise CheckpointError(f"{source}: does not fit the model: " + " | ".join(problems))
  for k, var in params.items():
    var[...] = jnp.asarray(flat[k], dtype=var[...].dtype)


def module_from_flat(abstract: nnx.Module, flat: Mapping[str, np.ndarray], source: str) -> nnx.Module:
  """The abstract module (from `nnx.eval_shape`) made concrete with zeros, then filled with `flat`
  (strict, `assign_flat`): no random init of frozen networks of up to 1B parameters."""
  graph, params = nnx.split(abstract, nnx.Param)
  module = nnx.merge(graph, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                         nnx.to_pure_dict(params)))
  assign_flat(module, flat, source)
  return module


def save_flat(path: str, flat: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
  """Writes a converted parameter file atomically (temp file + rename)."""
  from safetensors.numpy import save_file
  meta = {"format": FORMAT}
  meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
  _local(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, tmp, metadata=meta)
  os.replace(tmp, path)


def read_metadata(path: str) -> dict:
  """The metadata of a converted file, without reading its tensors (cheap: header only)."""
  _local(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"converted weight file not found: {path}")
  from safetensors import safe_open
  try:
    with safe_open(path, framework="numpy") as f:
      meta = dict(f.metadata() or {})
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from e
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{path}: not a gigatok_jax converted weight file (format "
                          f"{meta.get('format')!r}); convert the original with "
                          "`python -m gigatok_jax.convert.<model>`")
  return meta


def load_flat(path: str, expect_model: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a file written by `save_flat`; checks its format and (optionally) its model name."""
  meta = read_metadata(path)
  from safetensors import safe_open
  try:
    with safe_open(path, framework="numpy") as f:
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from e
  if expect_model is not None and meta.get("model") != expect_model:
    raise CheckpointError(f"{path}: holds '{meta.get('model')}' weights, expected '{expect_model}'")
  return flat, meta
