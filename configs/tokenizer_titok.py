"""TiTok-style compact 1D tokenizers on the GigaTok architecture: 32, 64 or 128 latent tokens for a
256 px image (16 x 16 CNN grid), through `model.num_latent_tokens` (README "The model").

Sizes follow TiTok's pairing of fewer tokens with larger transformers (TiTok-L-32, B-64, S-128):
GigaTok's L-L halves for 32 tokens, B-B for 64, S-S for 128 (widths in config/tokenizer.py SIZES).
The CNN, codebook (16384 x 8), losses, teachers and schedule are GigaTok's S-B recipe's, not TiTok's.

python -m gigatok_jax.main --config=configs/tokenizer_titok.py:64 --workdir=DIR --config.data.train_path=...

Variants: '' or '32', '64', '128'; add '_tiny' ('tiny', '64_tiny', '128_tiny') for the same structure
with small widths (64 px, an 8 x 8 grid, which pools into up to 128 tokens).
"""

from gigatok_jax import config

# Latent tokens -> transformer size of both halves.
SIZE_FOR_TOKENS = {32: "L", 64: "B", 128: "S"}


def get_config(variant: str = ""):
  v = config.parse_variant(variant, names=("tiny",), parts=tuple(str(n) for n in SIZE_FOR_TOKENS))
  tokens = int(v.part or 32)
  size = SIZE_FOR_TOKENS[tokens]
  c = config.tokenizer_config(enc=size, dec=size, kind="1d")
  c.model.num_latent_tokens = tokens
  c.global_batch_size = 128
  c.total_steps = 2_000_000       # as configs/tokenizer_sb.py: 200 epochs at batch 256, at batch 128
  c.loss.aux_loss_end = 15_000    # feature-reconstruction aux loss, as the S-S / S-B / B-L recipes
  return config.with_variant(c, v.name)
