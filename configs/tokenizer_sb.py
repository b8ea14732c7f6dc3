"""GigaTok S-B tokenizer (1d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_sb.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="S", dec="B", kind="1d")
  c.global_batch_size = 128
  c.total_steps = 2_000_000       # 200 epochs at batch 256, scaled to batch 128
  # Feature-reconstruction aux loss for the first 15k steps (reference configs; the released
  # VQ_BL256_train_new.yaml keeps use_direct_rec_loss off, so the shortcut term stays off).
  c.loss.aux_loss_end = 15_000
  return config.with_variant(c, variant)
