"""GigaTok B-L tokenizer (1d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_bl.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="B", dec="L", kind="1d")
  c.global_batch_size = 256
  c.total_steps = 1_000_000       # 200 epochs x 5000 iterations
  # Feature-reconstruction aux loss for the first 15k steps (reference configs; the released
  # VQ_BL256_train_new.yaml keeps use_direct_rec_loss off, so the shortcut term stays off).
  c.loss.aux_loss_end = 15_000
  c.model.scan_layers = True     # one compiled layer body per stack (README: The model)
  return config.with_variant(c, variant)
