"""AR probing (docs/spec.md §4.3): GPT-B, constant lr 1e-4 without warm-up, stopped at 250k iterations
(50 epochs inside the 300-epoch schedule); then 50k samples -> gFID -> validation loss -> linear
probe, all from one command:

python -m gigatok_jax.main --config=configs/gpt_b_probe.py --workdir=DIR --mode=ar_probe \
    --config.tokenizer.workdir=TOK --config.data.codes_path=... --config.data.eval_codes_path=... \
    --config.eval.fid_reference=VIRTUAL_imagenet256_labeled.npz \
    --config.eval.inception_path=fid_inception.safetensors
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.gpt_config("B")
  c.total_steps = 250_000
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  # The probing script uses a constant CFG schedule; the scale is searched (steps of 0.25).
  c.sample.cfg_schedule = "constant"
  c.sample.cfg_scale = 2.0
  # Official GPT training sees augmented images; of its two routes we take the pre-extracted one:
  # ten-crop codes at crop range 1.1 (scripts/extract_code_c2i.sh), one view drawn per step.
  c.extract.augment = "ten_crop"
  # Differs on purpose: the official linear probe crops and flips its input images at every step;
  # ours reads the first (un-augmented) view of each code record, since a probe on a frozen GPT sees
  # codes, not images (gigatok_jax/modes/probe.py). The probe's other settings are the reference's.
  return config.with_variant(c, variant, tiny=config.gpt_tiny_overrides)
