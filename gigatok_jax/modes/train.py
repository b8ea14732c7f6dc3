"""`--mode=train`: trains the recipe's tokenizer or GPT in the workdir, or resumes it."""

from __future__ import annotations

from gigatok_jax.train import loop


def run(config, workdir: str, *, progress: bool = True, options=None):
  del options
  loop.train(config, workdir, progress=progress)
