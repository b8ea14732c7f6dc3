"""Imported (pretrained) weights of a run: `<workdir>/pretrained/`, written by the converters.

A run directory made by `python -m gigatok_jax.convert` holds no training checkpoint, only
the model weights of a released PyTorch file:

  <workdir>/config.json            the recipe, with the sizes read from the source checkpoint
  <workdir>/pretrained/<item>/     one Orbax checkpoint per parameter tree: 'gen_params'
                                   (+ 'disc_params', 'disc_stats' when the file had the PatchGAN)
                                   for a tokenizer, 'params' for a GPT; the same trees, names and
                                   shapes as the fields of the training state (one directory each,
                                   so inference restores the generator alone)
  <workdir>/pretrained/info.json   what it came from: source file and sha256, weights entry, recipe,
                                   the source's training steps, the items saved

Why not a training checkpoint: a checkpoint holds the optimizer states too (3x the weights; 35 GB
more for XL-XXL) and would claim a training step. Inference modes read the weights when the run
has no checkpoint of its own; training starts a fresh state (step 0, new optimizer states) and
replaces its weights with these (`init_from`, or automatically in a workdir made by a converter),
so fine-tuning a released model is `--mode=train` on the converted directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gigatok_jax.convert.gigatok import _flat_shapes as flat_names  # dotted name -> shape
from gigatok_jax.errors import CheckpointError
from gigatok_jax.models import layer_layout

DIRNAME = "pretrained"
INFO_FILE = "info.json"


def find(workdir: str, init_from: str = "") -> str | None:
  """The pretrained directory a run uses: `init_from` (a run directory or its pretrained/ dir;
  an error if it has none), else `<workdir>/pretrained` if present, else None."""
  if init_from:
    for candidate in (os.path.join(init_from, DIRNAME), init_from):
      if os.path.isfile(os.path.join(candidate, INFO_FILE)):
        return candidate
    raise CheckpointError(f"init_from={init_from!r} holds no converted weights (expected "
                          f"{os.path.join(init_from, DIRNAME, INFO_FILE)}; make one with "
                          "`python -m gigatok_jax.convert`)")
  path = os.path.join(workdir, DIRNAME)
  return path if os.path.isfile(os.path.join(path, INFO_FILE)) else None


def read_info(path: str) -> dict:
  try:
    with open(os.path.join(path, INFO_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: unreadable {INFO_FILE} ({e})") from e


def save(workdir: str, trees: Mapping[str, Any], info: Mapping[str, Any]) -> str:
  """Writes `trees` (host arrays) and `info` as `<workdir>/pretrained`, atomically (temp + rename)."""
  import orbax.checkpoint as ocp
  final = os.path.join(os.path.abspath(workdir), DIRNAME)
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  ckptr = ocp.StandardCheckpointer()
  for name, tree in trees.items():
    ckptr.save(os.path.join(tmp, name), tree)
  ckptr.wait_until_finished()
  ckptr.close()
  with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump({**info, "items": sorted(trees)}, f, indent=2)
  if os.path.exists(final):
    shutil.rmtree(final)
  os.replace(tmp, final)
  return final


def restore(path: str, abstract: Mapping[str, Any]) -> dict[str, Any]:
  """The items named in `abstract` (ShapeDtypeStruct trees with shardings), restored onto them."""
  import orbax.checkpoint as ocp
  have = set(read_info(path).get("items", ()))
  missing = sorted(set(abstract) - have)
  if missing:
    raise CheckpointError(f"{path}: has no {missing} (it holds {sorted(have)})")
  ckptr = ocp.StandardCheckpointer()
  out = {}
  try:
    for name, tree in abstract.items():
      # strict=True (the default) refuses any shape that differs from the stored one.
      out[name] = ckptr.restore(os.path.join(path, name), tree)
  except Exception as e:  # noqa: BLE001 - orbax raises many types for a tree that does not fit
    try:
      stored = ckptr.metadata(os.path.join(path, name))
      hint = layer_layout.mismatch_hint(flat_names(getattr(stored, "item_metadata", stored)),
                                        flat_names(tree))
    except Exception:  # noqa: BLE001 - the hint is optional; the error below is the news
      hint = ""
    raise CheckpointError(f"{path}: the converted weights ({name}) do not fit this model{hint} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:500]})") from e
  finally:
    ckptr.close()
  return out


def initialize_state(state: Any, abstract_state: Any, path: str) -> Any:
  """`state` (a fresh training state) with its weights replaced by those saved in `path`.

  Every item saved is used: a tokenizer's generator (also copied into the EMA weights when the run
  keeps EMA) and, when present, the discriminator; a GPT's parameters.
  """
  items = [k for k in read_info(path).get("items", ()) if hasattr(state, k)]
  if not items:
    raise CheckpointError(f"{path}: its weights are for another kind of model")
  restored = restore(path, {k: getattr(abstract_state, k) for k in items})
  if "gen_params" in restored and getattr(state, "ema_params", None) is not None:
    restored["ema_params"] = jax.tree.map(jnp.copy, restored["gen_params"])
  return dataclasses.replace(state, **restored)
