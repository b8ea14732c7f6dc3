"""GigaTok S-B tokenizer (1d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_sb.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="S", dec="B", kind="1d")
  c.global_batch_size = 128
  c.total_steps = 2_000_000       # 200 epochs at batch 256, scaled to batch 128
  # As configs/vq/VQ_SB256.yaml (docs/official_settings.md): feature reconstruction and the shortcut
  # (direct) reconstruction for the first 15k steps; the DDP trainer decays norm parameters too.
  # Differs on purpose: float32 compute where the official scripts use fp16 (model.dtype; fp16
  # needs loss scaling, and TPUs run bf16; set model.dtype='bfloat16' for speed).
  c.loss.aux_loss_end = 15_000
  c.loss.shortcut_reconstruction = True
  c.optim.decay_norms = True
  return config.with_variant(c, variant)
