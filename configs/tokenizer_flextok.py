"""FlexTok-style variable-length 1D tokenizer: GigaTok's S-B Q-Former with FSQ (8, 8, 8, 5, 5, 5)
(64000 codes) and nested dropout over its 256 tokens, so one model decodes from the first
1, 2, 4, ..., 256 tokens (docs/quantizers.md). `--mode=eval` scores every length and plots PSNR
against tokens; a GPT may model any prefix length (its model.num_tokens).

python -m gigatok_jax.main --config=configs/tokenizer_flextok.py --workdir=DIR --config.data.train_path=...

`:tiny`: small widths, 64 px (8 x 8 grid, 64 tokens, lengths 1..64), levels (8, 5, 5, 5).
"""

import math

from gigatok_jax import config


def get_config(variant: str = ""):
  v = config.parse_variant(variant, names=("tiny",))
  c = config.load_recipe("configs/tokenizer_sb.py" + (":tiny" if v.tiny else ""), key="--config")
  levels, tokens = (8, 8, 8, 5, 5, 5), 256
  if v.tiny:
    levels, tokens = (8, 5, 5, 5), 64
  c.model.update(quantizer="fsq", fsq_levels=levels, code_dim=len(levels),
                 codebook_size=math.prod(levels),
                 nested_dropout=tuple(2 ** i for i in range(int(math.log2(tokens)) + 1)))
  c.loss.entropy_weight = 0.0     # FSQ has no entropy term
  return c
