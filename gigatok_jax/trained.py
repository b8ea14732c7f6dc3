"""Loading a trained tokenizer (the latest checkpoint of its run directory) for inference modes:
reconstruct, extract_codes, sample."""

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


def load_tokenizer(config, workdir: str, mesh: jax.sharding.Mesh) -> TrainedTokenizer:
  """Restores the latest checkpoint of tokenizer run `workdir` onto `mesh`."""
  task = TokenizerTask(config, mesh)
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints", save_every_steps=1)
  step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    raise CheckpointError(f"no checkpoint in {workdir}/checkpoints: train the tokenizer first "
                          "(--mode=train) or point at a trained run")
  state = ckpt.restore(task.abstract_state)
  ckpt.close()
  params = state.ema_params if state.ema_params is not None else state.gen_params
  return TrainedTokenizer(task, params, int(step))
