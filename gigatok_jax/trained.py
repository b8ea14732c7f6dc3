"""Loading trained runs (the latest checkpoint of a run directory) for inference modes:
reconstruct, extract_codes, sample, eval, probe."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gigatok_jax import checkpointing, pretrained
from gigatok_jax.errors import CheckpointError
from gigatok_jax.train.tokenizer_step import TokenizerTask


class TrainedTokenizer(NamedTuple):
  task: TokenizerTask
  params: Any          # EMA weights when the run kept them, else the generator weights
  step: int


def restore_latest(abstract_state: Any, workdir: str, what: str) -> tuple[Any, int]:
  """(state, step) of the latest checkpoint in <workdir>/checkpoints; a clear error if none."""
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint in {workdir}/checkpoints: train the {what} first "
                            "(--mode=train) or point at a trained run")
    return ckpt.restore(abstract_state), int(step)
  finally:
    ckpt.close()


def _imported(abstract_state: Any, workdir: str, field: str) -> tuple[Any, int] | None:
  """(weights, source step) of a converted run that has not trained yet (pretrained.py), or None."""
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1)
  try:
    if ckpt.latest_step() is not None:
      return None
  finally:
    ckpt.close()
  path = pretrained.find(workdir)
  if path is None:
    return None
  tree = pretrained.restore(path, {field: getattr(abstract_state, field)})[field]
  return tree, int(pretrained.read_info(path).get("source_steps", 0))


def load_tokenizer(config, workdir: str, mesh: jax.sharding.Mesh) -> TrainedTokenizer:
  """Restores the latest checkpoint of tokenizer run `workdir` onto `mesh` (or, in a run made by
  the checkpoint converter that has not trained yet, its imported weights)."""
  task = TokenizerTask(config, mesh)
  imported = _imported(task.abstract_state, workdir, "gen_params")
  if imported is not None:
    return TrainedTokenizer(task, *imported)
  state, step = restore_latest(task.abstract_state, workdir, "tokenizer")
  params = state.ema_params if state.ema_params is not None else state.gen_params
  return TrainedTokenizer(task, params, step)


def load_gpt_params(task, workdir: str) -> tuple[Any, int]:
  """(params, step) of the latest checkpoint of GPT run `workdir` (or its imported weights), in
  `task`'s shardings."""
  imported = _imported(task.abstract_state, workdir, "params")
  if imported is not None:
    return imported
  state, step = restore_latest(task.abstract_state, workdir, "GPT")
  return state.params, step
