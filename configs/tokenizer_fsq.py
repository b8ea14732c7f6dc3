"""FSQ 1D tokenizer: GigaTok's S-B Q-Former with Finite Scalar Quantization, levels
(8, 8, 8, 5, 5, 5): 6 channels per token, 64000 codes, no codebook parameters and no codebook or
entropy losses (FlexTok's quantizer and levels; docs/quantizers.md).

python -m gigatok_jax.main --config=configs/tokenizer_fsq.py --workdir=DIR --config.data.train_path=...

`:tiny` keeps the structure with small widths and levels (8, 5, 5, 5): 1000 codes.
"""

import math

from gigatok_jax import config


def get_config(variant: str = ""):
  v = config.parse_variant(variant, names=("tiny",))
  c = config.tokenizer_config(enc="S", dec="B", kind="1d")
  levels = (8, 8, 8, 5, 5, 5)
  c.global_batch_size = 128
  c.total_steps = 2_000_000       # as configs/tokenizer_sb.py
  c.loss.aux_loss_end = 15_000
  c.loss.shortcut_reconstruction = True
  c.optim.decay_norms = True
  if v.tiny:
    c = config.with_variant(c, v.name)
    levels = (8, 5, 5, 5)
  c.model.update(quantizer="fsq", fsq_levels=levels, code_dim=len(levels),
                 codebook_size=math.prod(levels))
  c.loss.entropy_weight = 0.0     # FSQ has no entropy term (the quantizer returns 0)
  return c
