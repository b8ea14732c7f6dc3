"""GigaTok XL-XXL tokenizer (1d), docs/spec.md §2.3. `:tiny` gives the same structure with small widths.

python -m gigatok_jax.main --config=configs/tokenizer_xlxxl.py --workdir=DIR --config.data.train_path=...
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  c = config.tokenizer_config(enc="XL", dec="XXL", kind="1d")
  c.global_batch_size = 256
  c.total_steps = 1_500_000       # 300 epochs x 5000 iterations
  c.loss.entropy_weight = 0.005   # entropy loss is what makes the 2.9B model use its codebook
  c.optim.warmup_steps = 5000
  c.model.dtype = 'bfloat16'
  c.model.remat = "full"
  c.model.scan_layers = True     # one compiled layer body per stack (README: The model)
  return config.with_variant(c, variant)
