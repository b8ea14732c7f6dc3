"""GigaTok S-S tokenizer (2d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_ss_2d.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="S", dec="S", kind="2d")
  c.global_batch_size = 128
  c.total_steps = 1_000_000
  c.model.vit_layer_type = 'decoder'   # SS_2d leaves the reference's default layer type
  # As configs/vq/VQ_SS256_2d.yaml (docs/official_settings.md): feature reconstruction and the shortcut
  # (direct) reconstruction for the first 15k steps; the DDP trainer decays norm parameters too.
  # Differs on purpose: float32 compute where the official scripts use fp16 (model.dtype; fp16
  # needs loss scaling, and TPUs run bf16; set model.dtype='bfloat16' for speed).
  c.loss.aux_loss_end = 15_000
  c.loss.shortcut_reconstruction = True
  c.optim.decay_norms = True
  return config.with_variant(c, variant)
