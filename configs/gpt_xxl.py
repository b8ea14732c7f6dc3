"""GPT-XXL (1.4B): batch 512, 750k iterations, warm-up 200, FSDP (docs/spec.md §4.2). See gpt_b.py."""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.gpt_config("XXL")
  c.global_batch_size = 512
  c.total_steps = 750_000
  c.optim.warmup_steps = 200
  c.mesh.fsdp = -1                    # parameters and optimizer state sharded over all devices
  c.mesh.data = 1
  c.sample.cfg_scale = 1.25
  # Official GPT training sees augmented images; of its two routes we take the pre-extracted one:
  # ten-crop codes at crop range 1.1 (scripts/extract_code_c2i.sh), one view drawn per step.
  c.extract.augment = "ten_crop"
  return config.with_variant(c, variant, tiny=config.gpt_tiny_overrides)
