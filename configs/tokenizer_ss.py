"""GigaTok S-S tokenizer (1d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_ss.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="S", dec="S", kind="1d")
  c.global_batch_size = 128      # S-S config batch (docs/spec.md §2.3)
  c.total_steps = 1_000_000       # 100 epochs of 5000 iterations at batch 256, scaled to batch 128
  # Feature-reconstruction aux loss for the first 15k steps (reference configs; the released
  # VQ_BL256_train_new.yaml keeps use_direct_rec_loss off, so the shortcut term stays off).
  c.loss.aux_loss_end = 15_000
  return config.with_variant(c, variant)
