"""GPT-XL (775M), class-conditional on tokenizer codes (docs/spec.md §4.1; its recipe is unverified in the
reference, so this keeps the GPT-B/L training settings). See gpt_b.py."""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.gpt_config("XL")
  c.sample.cfg_scale = 1.25
  # Official GPT training sees augmented images; of its two routes we take the pre-extracted one:
  # ten-crop codes at crop range 1.1 (scripts/extract_code_c2i.sh), one view drawn per step.
  c.extract.augment = "ten_crop"
  return config.with_variant(c, variant, tiny=config.gpt_tiny_overrides)
