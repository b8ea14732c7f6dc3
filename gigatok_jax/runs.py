"""The run directory: every path inside a workdir, and where a run's weights come from.

  <workdir>/config.json        the config the run trains with (later modes read it back)
  <workdir>/checkpoints/<step> Orbax training checkpoints (checkpointing.py)
  <workdir>/pretrained/        weights imported from a released PyTorch file (convert/release.py):
                               one Orbax item per parameter tree ('gen_params' [+ 'disc_params',
                               'disc_stats'] for a tokenizer, 'params' for a GPT) + info.json
  <workdir>/images/            reconstruction grids written while training
  <workdir>/reconstruct/       --mode=reconstruct: grid_<step>.png, metrics_<step>.json
  <workdir>/eval/<name>.json   --mode=eval / probe / ar_probe results
  <workdir>/samples/           --mode=sample: samples_<step>.npz, grids, settings
  <workdir>/codes/<split>/     --mode=extract_codes: token shards of a GPT run

Where the weights come from is decided here alone, for training and inference alike:
  1. the run's own latest checkpoint (resume: the whole training state, data position included);
  2. `init_from` (a converted run directory), when given;
  3. the workdir's own imported weights (a directory made by the converter);
  4. random initialisation (training) or a clear error (inference).
An explicit `init_from` comes before the workdir's own imports because it is what the user asked
for on this command line; training from either starts a fresh state at step 0 (new optimizer
moments) with those weights put in.

Why imported weights are not a training checkpoint: a checkpoint holds the optimizer states too
(twice the weights again; 35 GB more for XL-XXL) and would claim a training step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from gigatok_jax import checkpointing, fileio, tree_names
from gigatok_jax.errors import CheckpointError, ConfigError
from gigatok_jax.models import layer_layout

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
PRETRAINED = "pretrained"
INFO_FILE = "info.json"


# ------------------------------------------------------------------------------------- paths
def config_path(workdir: str) -> str:
  return fileio.join(workdir, CONFIG_FILE)


def checkpoints_dir(workdir: str) -> str:
  return fileio.join(workdir, CHECKPOINTS)


def images_dir(workdir: str) -> str:
  return fileio.join(workdir, "images")


def reconstruct_dir(workdir: str) -> str:
  return fileio.join(workdir, "reconstruct")


def samples_dir(workdir: str) -> str:
  return fileio.join(workdir, "samples")


def codes_dir(workdir: str, split: str) -> str:
  return fileio.join(workdir, "codes", split)


def eval_path(workdir: str, name: str, ext: str = "json") -> str:
  return fileio.join(workdir, "eval", f"{name}.{ext}")


# ------------------------------------------------------------------------------- config.json
def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Saves the config a run trains with as <workdir>/config.json (later modes read it back)."""
  return fileio.atomic_write_text(config_path(workdir), config.to_json(indent=2))


def has_config(workdir: str) -> bool:
  return fileio.isfile(config_path(workdir))


def read_config(workdir: str, key: str = "tokenizer.workdir") -> ml_collections.ConfigDict:
  """The config a training run in `workdir` saved; a ConfigError naming `key` when absent."""
  path = config_path(workdir)
  if not fileio.isfile(path):
    raise ConfigError(key, f"{path} not found: {workdir!r} is not a gigatok_jax training run "
                      "(or set tokenizer.recipe to the recipe it was trained with)")
  return ml_collections.ConfigDict(fileio.read_json(path))


# ------------------------------------------------------------------ a GPT run's tokenizer run
def gpt_tokenizer_config(config) -> ml_collections.ConfigDict:
  """The tokenizer's config: the one its run saved (tokenizer.workdir/config.json) or, when set,
  tokenizer.recipe; with the extraction's image-path overrides and the GPT's inference_dtype."""
  if not config.tokenizer.workdir:
    raise ConfigError("tokenizer.workdir", "is empty; set it to the tokenizer's training run directory")
  if config.tokenizer.recipe:
    from gigatok_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    tok = config_lib.load_recipe(config.tokenizer.recipe)
  else:
    tok = read_config(config.tokenizer.workdir)
  for split in ("train", "eval"):
    path = config.extract[f"image_{split}_path"]
    if path:
      tok.data[f"{split}_path"] = path
  with tok.unlocked():                   # the GPT run's choice covers the tokenizer it decodes with
    tok.inference_dtype = config.get("inference_dtype", "auto")
  return tok


def check_tokenizer_fits(config, tok) -> None:
  """The GPT's vocabulary and sequence length must be the tokenizer's codebook and token count
  (or, for a tokenizer trained with nested dropout, a prefix length of it: the GPT then models
  the first model.num_tokens codes, and samples decode from them)."""
  from gigatok_jax.models.tokenizer import num_tokens  # pylint: disable=import-outside-toplevel
  n = num_tokens(tok.model, tok.data.image_size)
  if config.model.vocab_size != tok.model.codebook_size:
    raise ConfigError("model.vocab_size", f"is {config.model.vocab_size} but the tokenizer "
                      f"in {config.tokenizer.workdir} has a codebook of {tok.model.codebook_size}")
  prefix_ok = bool(tok.model.get("nested_dropout", ())) and 1 <= config.model.num_tokens <= n
  if config.model.num_tokens != n and not prefix_ok:
    raise ConfigError("model.num_tokens", f"is {config.model.num_tokens} but the tokenizer "
                      f"in {config.tokenizer.workdir} gives {n} tokens per image")


def save_eval(workdir: str, name: str, result: dict) -> str:
  """Writes `result` (numpy scalars become floats) as <workdir>/eval/<name>.json; returns the path."""
  return fileio.atomic_write_json(eval_path(workdir, name), result)


# --------------------------------------------------------------------------- imported weights
def find_imported(workdir: str, init_from: str = "") -> str | None:
  """The imported-weights directory a run uses: `init_from` (a run directory or its pretrained/
  dir; an error if it has none), else `<workdir>/pretrained` if present, else None."""
  if init_from:
    for candidate in (fileio.join(init_from, PRETRAINED), init_from):
      if fileio.isfile(fileio.join(candidate, INFO_FILE)):
        return candidate
    raise CheckpointError(f"init_from={init_from!r} holds no converted weights (expected "
                          f"{fileio.join(init_from, PRETRAINED, INFO_FILE)}; make one with "
                          "`python -m gigatok_jax.convert`)")
  path = fileio.join(workdir, PRETRAINED)
  return path if fileio.isfile(fileio.join(path, INFO_FILE)) else None


def read_imported_info(path: str) -> dict:
  try:
    return fileio.read_json(fileio.join(path, INFO_FILE))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: unreadable {INFO_FILE} ({e})") from e


def save_imported(workdir: str, trees: Mapping[str, Any], info: Mapping[str, Any]) -> str:
  """Writes `trees` (host arrays) and `info` as `<workdir>/pretrained`; a reader sees either the old
  weights, none, or all of the new ones.

  Local disks: written beside it as `pretrained.tmp-<pid>` and renamed into place. Object stores
  have no atomic directory rename, so there `info.json` is the commit mark: the old one is removed
  first, the items are written in place and the new `info.json` last (`find_imported` only
  accepts a directory that has one).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  final = fileio.join(fileio.resolve(workdir), PRETRAINED)
  remote = fileio.is_remote(final)
  if remote:
    fileio.remove(fileio.join(final, INFO_FILE))
    fileio.rmtree(final)
    target = final
  else:
    target = f"{final}.tmp-{os.getpid()}"
    fileio.rmtree(target)
  fileio.makedirs(target)
  ckptr = ocp.StandardCheckpointer()
  for name, tree in trees.items():
    ckptr.save(fileio.join(target, name), tree)
  ckptr.wait_until_finished()
  ckptr.close()
  fileio.atomic_write_json(fileio.join(target, INFO_FILE), {**info, "items": sorted(trees)})
  if not remote:
    if os.path.exists(final):
      fileio.rmtree(final, missing_ok=False)
    os.replace(target, final)
  return final


def restore_imported(path: str, abstract: Mapping[str, Any]) -> dict[str, Any]:
  """The items named in `abstract` (ShapeDtypeStruct trees with shardings), restored onto them."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  have = set(read_imported_info(path).get("items", ()))
  missing = sorted(set(abstract) - have)
  if missing:
    raise CheckpointError(f"{path}: has no {missing} (it holds {sorted(have)})")
  ckptr = ocp.StandardCheckpointer()
  out = {}
  try:
    for name, tree in abstract.items():
      # strict=True (the default) refuses any shape that differs from the stored one.
      out[name] = ckptr.restore(fileio.join(path, name), tree)
  except Exception as e:  # noqa: BLE001 - orbax raises many types for a tree that does not fit
    try:
      stored = ckptr.metadata(fileio.join(path, name))
      hint = layer_layout.mismatch_hint(
          tree_names.flat_shapes(getattr(stored, "item_metadata", stored)),
          tree_names.flat_shapes(tree))
    except Exception:  # noqa: BLE001 - the hint is optional; the error below is the news
      hint = ""
    raise CheckpointError(f"{path}: the converted weights ({name}) do not fit this model{hint} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:500]})") from e
  finally:
    ckptr.close()
  return out


# ------------------------------------------------------------------------- where weights come from
def open_checkpoints(workdir: str, config=None) -> checkpointing.Checkpointer:
  """The run's Checkpointer: with the run's cadence when `config` is given (the training job, which
  also sets incomplete or damaged steps aside), read-only use otherwise."""
  if config is None:
    return checkpointing.Checkpointer(checkpoints_dir(workdir), save_every_steps=1)
  return checkpointing.Checkpointer(checkpoints_dir(workdir),
                                    save_every_steps=config.checkpoint_every_steps,
                                    max_to_keep=config.max_checkpoints_to_keep, repair=True)


class Start(NamedTuple):
  state: Any
  source: str        # "checkpoint step N", "<imported path> (what it came from)" or "random"


def training_state(task, workdir: str, *, ckpt: checkpointing.Checkpointer | None = None,
                   data_iter=None, init_from: str = "") -> Start:
  """The state a training run starts from (the order in the module docstring).

  `task` provides `abstract_state` (with shardings), `init_state()` and `mesh`; `ckpt` is the
  run's Checkpointer (None: no resume) and the data iterator's position is restored in place.
  """
  latest = None if ckpt is None else ckpt.latest_step()
  if latest is not None:
    # The newest intact step: a damaged newer one is reported, set aside and skipped.
    state = ckpt.restore(task.abstract_state, data_iter)
    return Start(state, f"checkpoint step {ckpt.restored_step}")
  state = task.init_state()
  path = find_imported(workdir, init_from)
  if path is None:
    return Start(state, "random")
  info = read_imported_info(path)
  items = [k for k in info.get("items", ()) if hasattr(state, k)]
  if not items:
    raise CheckpointError(f"{path}: its weights are for another kind of model")
  with jax.set_mesh(task.mesh):
    restored = restore_imported(path, {k: getattr(task.abstract_state, k) for k in items})
    if "gen_params" in restored and getattr(state, "ema_params", None) is not None:
      restored["ema_params"] = jax.tree.map(jnp.copy, restored["gen_params"])
    return Start(dataclasses.replace(state, **restored),
                 f"{path} ({info.get('source', '?')}, {', '.join(info.get('items', []))})")


class Weights(NamedTuple):
  params: Any        # in the shardings of the abstract tree asked for
  step: int          # training step of the checkpoint, or the source's steps for imported ones
  source: str


def inference_weights(config, workdir: str, abstract: Any, what: str) -> Weights:
  """The weights inference runs with: the latest checkpoint's (EMA weights when the run kept
  them), else the run's imported weights; a clear error if neither exists.

  `abstract` is the model's ShapeDtypeStruct tree with shardings (`build.ModelSpec.abstract`);
  only the weights are read, never the optimizer state.
  """
  if config.get("task") == "gpt":
    field, imported_field = "params", "params"
  else:
    field = "ema_params" if config.optim.ema_decay > 0 else "gen_params"
    imported_field = "gen_params"
  ckpt = open_checkpoints(workdir)
  try:
    if ckpt.latest_step() is not None:
      fields, step = ckpt.restore_fields({field: abstract})
      return Weights(fields[field], int(step), f"checkpoint step {step}")
  finally:
    ckpt.close()
  path = find_imported(workdir)
  if path is None:
    raise CheckpointError(f"no checkpoint in {checkpoints_dir(workdir)}: train the {what} first "
                          "(--mode=train), point at a trained run, or convert a released one "
                          "(python -m gigatok_jax.convert)")
  params = restore_imported(path, {imported_field: abstract})[imported_field]
  return Weights(params, int(read_imported_info(path).get("source_steps", 0)), f"imported {path}")
