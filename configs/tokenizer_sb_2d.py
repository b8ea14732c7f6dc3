"""GigaTok S-B tokenizer (2d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_sb_2d.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="S", dec="B", kind="2d")
  c.global_batch_size = 128
  c.total_steps = 2_000_000
  return config.with_variant(c, variant)
