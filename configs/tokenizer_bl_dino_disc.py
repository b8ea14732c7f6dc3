"""GigaTok B-L tokenizer with the DINO discriminator (configs/vq/VQ_BL256_dino_disc.yaml, the released
VQ_BL256_dino_disc.pt): the B-L recipe with `discriminator.kind='dinodisc'` starting at step 80k.

python -m gigatok_jax.convert.dino_discriminator --src=dino_deitsmall16_pretrain.pth --out=dino_vits16.safetensors
python -m gigatok_jax.main --config=configs/tokenizer_bl_dino_disc.py --workdir=DIR \
    --config.data.train_path=... --config.teachers.dino_disc_path=dino_vits16.safetensors
"""

import os

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.load_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_bl.py"))
  # The only differences of VQ_BL256_dino_disc.yaml from VQ_BL256.yaml.
  c.discriminator.kind = "dinodisc"
  c.loss.disc_start_step = 80_000
  c = config.with_variant(c, variant)
  if config.parse_variant(variant).tiny:
    c.discriminator.depth = 3      # 3 of the backbone's 12 blocks (readouts after embedding, block 2)
  return c
