"""Loading trained runs (the latest checkpoint of a run directory) for inference modes:
reconstruct, extract_codes, sample, eval, probe."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gigatok_jax import checkpointing
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


def load_tokenizer(config, workdir: str, mesh: jax.sharding.Mesh) -> TrainedTokenizer:
  """Restores the latest checkpoint of tokenizer run `workdir` onto `mesh`."""
  task = TokenizerTask(config, mesh)
  state, step = restore_latest(task.abstract_state, workdir, "tokenizer")
  params = state.ema_params if state.ema_params is not None else state.gen_params
  return TrainedTokenizer(task, params, step)


def load_gpt_params(task, workdir: str) -> tuple[Any, int]:
  """(params, step) of the latest checkpoint of GPT run `workdir`, in `task`'s shardings."""
  state, step = restore_latest(task.abstract_state, workdir, "GPT")
  return state.params, step
