"""GPT-L (343M), class-conditional on the codes of a 1D tokenizer (docs/spec.md §4.1 / 4.2). See gpt_b.py."""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.gpt_config("L")
  c.sample.cfg_scale = 1.75           # step schedule starting value for GPT-L (docs/spec.md §4.4)
  # Official GPT training sees augmented images; of its two routes we take the pre-extracted one:
  # ten-crop codes at crop range 1.1 (scripts/extract_code_c2i.sh), one view drawn per step.
  c.extract.augment = "ten_crop"
  return config.with_variant(c, variant, tiny=config.gpt_tiny_overrides)
