"""GPT-B (111M), class-conditional on the codes of a 1D tokenizer (docs/spec.md §4.1 / 4.2).

python -m gigatok_jax.main --config=configs/gpt_b.py --workdir=DIR --mode=extract_codes \
    --config.tokenizer.recipe=configs/tokenizer_ss.py --config.tokenizer.workdir=TOKDIR
python -m gigatok_jax.main --config=configs/gpt_b.py --workdir=DIR --config.data.codes_path=DIR/codes/train
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.gpt_config("B")
  c.optim.warmup_steps = 5000         # README of the reference for GPT-B
  c.sample.cfg_scale = 2.5            # step schedule starting value for GPT-B (docs/spec.md §4.4)
  # Official GPT training sees augmented images; of its two routes we take the pre-extracted one:
  # ten-crop codes at crop range 1.1 (scripts/extract_code_c2i.sh), one view drawn per step.
  c.extract.augment = "ten_crop"
  return config.with_variant(c, variant, tiny=config.gpt_tiny_overrides)
