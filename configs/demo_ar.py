"""The embedded AR demo: a tiny tokenizer and a tiny class-conditional GPT on the 1797 real 8x8
handwritten digits of scikit-learn (upsampled to 32 px, 10 classes). No download; the whole chain
(launch/demo_ar.sh) ends in ~10 minutes on a 2-core CPU with a sample grid, one row per digit.

  bash launch/demo_ar.sh /tmp/gigatok_demo_ar
which runs, with DIR=/tmp/gigatok_demo_ar:
  python -m gigatok_jax.main --config=configs/demo_ar.py:tokenizer --workdir=DIR/tokenizer
  python -m gigatok_jax.main --config=configs/demo_ar.py --workdir=DIR/gpt --mode=extract_codes \
      --config.tokenizer.workdir=DIR/tokenizer [--config.extract.split=eval]
  python -m gigatok_jax.main --config=configs/demo_ar.py --workdir=DIR/gpt \
      --config.tokenizer.workdir=DIR/tokenizer --config.data.codes_path=DIR/gpt/codes/train \
      --config.data.eval_codes_path=DIR/gpt/codes/eval
  python -m gigatok_jax.main --config=configs/demo_ar.py --workdir=DIR/gpt --mode=sample \
      --config.tokenizer.workdir=DIR/tokenizer
"""

from gigatok_jax import config


def tokenizer(variant: str = ""):
  """32 px digits -> 4 x 4 grid -> 16 tokens from a 256-code codebook."""
  c = config.tokenizer_config(enc="S", dec="S", kind="1d")
  c.model.update(dict(
      cnn_ch=32, cnn_ch_mult=(1, 1, 2, 2), cnn_num_res_blocks=1, z_channels=64,
      enc_width=128, enc_layers=2, enc_heads=4,
      dec_width=128, dec_layers=2, dec_heads=4,
      codebook_size=256, distill_depth=2, distill_dim=64,
  ))
  c.data.source = "digits"
  c.data.image_size = 32
  c.data.random_flip = False          # a flipped digit is another glyph
  c.global_batch_size = 16
  c.total_steps = 700
  c.checkpoint_every_steps = 350
  c.log_every_steps = 50
  c.image_every_steps = 350
  c.eval_num_images = 16
  c.loss.aux_loss_end = 150            # as configs/demo.py: CNN shortcut + feature targets early
  c.loss.shortcut_reconstruction = True
  c.loss.disc_weight = 0.0
  c.loss.entropy_weight = 0.02
  c.loss.perceptual_weight = 0.0
  c.loss.semantic_weight = 0.0
  c.optim.lr = 3e-4
  c.optim.final_lr = 3e-5
  c.optim.warmup_steps = 50
  return config.with_variant(c, variant)


def get_config(variant: str = ""):
  v = config.parse_variant(variant, parts=("tokenizer",))
  if v.part == "tokenizer":
    return tokenizer(v.name)
  c = config.gpt_config("B")
  c.model.update(dict(width=128, layers=4, heads=4, vocab_size=256, num_tokens=16, num_classes=10,
                      dtype="float32"))
  c.global_batch_size = 64
  c.total_steps = 1200
  c.checkpoint_every_steps = 600
  c.log_every_steps = 100
  c.eval_every_steps = 400
  c.eval_num_batches = 3
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.05
  c.extract.batch_size = 64
  c.extract.images_per_shard = 512
  c.sample.num_samples = 100           # 10 per digit
  c.sample.batch_size = 50
  c.sample.grid_images = 100
  c.sample.cfg_scale = 2.0
  c.sample.cfg_schedule = "constant"
  return config.with_variant(c, v.name, tiny=config.gpt_tiny_overrides)
