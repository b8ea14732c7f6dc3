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


def restore_weights(abstract_state: Any, workdir: str, what: str, field: str
                    ) -> tuple[Any, Any, int]:
  """(state, None, step) from the latest checkpoint in <workdir>/checkpoints or, in a run made by
  the checkpoint converter that has not trained yet, (None, its imported `field` weights, source
  step); a clear error if neither exists."""
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1)
  try:
    step = ckpt.latest_step()
    if step is not None:
      return ckpt.restore(abstract_state), None, int(step)
  finally:
    ckpt.close()
  path = pretrained.find(workdir)
  if path is None:
    raise CheckpointError(f"no checkpoint in {workdir}/checkpoints: train the {what} first "
                          "(--mode=train), point at a trained run, or convert a released one "
                          "(python -m gigatok_jax.convert)")
  tree = pretrained.restore(path, {field: getattr(abstract_state, field)})[field]
  return None, tree, int(pretrained.read_info(path).get("source_steps", 0))


def load_tokenizer(config, workdir: str, mesh: jax.sharding.Mesh) -> TrainedTokenizer:
  """Restores the latest checkpoint of tokenizer run `workdir` onto `mesh` (or, in a run made by
  the checkpoint converter that has not trained yet, its imported weights)."""
  task = TokenizerTask(config, mesh)
  state, params, step = restore_weights(task.abstract_state, workdir, "tokenizer", "gen_params")
  if state is not None:
    params = state.ema_params if state.ema_params is not None else state.gen_params
  return TrainedTokenizer(task, params, step)


def load_gpt_params(task, workdir: str) -> tuple[Any, int]:
  """(params, step) of the latest checkpoint of GPT run `workdir` (or its imported weights), in
  `task`'s shardings."""
  state, params, step = restore_weights(task.abstract_state, workdir, "GPT", "params")
  return (state.params if state is not None else params), step
