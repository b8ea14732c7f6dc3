"""`--mode=prepare_data`: ArrayRecord shards from an image folder or the tfds ImageNet builder
(the `data.prepare_*` keys; the work itself is `data/prepare.py`)."""

from __future__ import annotations

from gigatok_jax.data import prepare


def run(config, workdir=None, *, progress: bool = True, options=None) -> dict:
  del workdir, options
  summary = prepare.run_prepare(config.data, progress=progress)
  print(summary)
  return summary
