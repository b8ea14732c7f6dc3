"""GigaTok B-L tokenizer (2d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_bl_2d.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="B", dec="L", kind="2d")
  c.global_batch_size = 256
  c.total_steps = 1_000_000
  c.loss.entropy_weight = 0.005
  return config.with_variant(c, variant)
