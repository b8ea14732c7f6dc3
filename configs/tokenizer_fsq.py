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
  c = config.load_recipe("configs/tokenizer_sb.py" + (":tiny" if v.tiny else ""), key="--config")
  levels = (8, 8, 8, 5, 5, 5)
  if v.tiny:
    levels = (8, 5, 5, 5)
  c.model.update(quantizer="fsq", fsq_levels=levels, code_dim=len(levels),
                 codebook_size=math.prod(levels))
  c.loss.entropy_weight = 0.0     # FSQ has no entropy term (the quantizer returns 0)
  return c
