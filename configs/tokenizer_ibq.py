"""IBQ-style 1D tokenizer: GigaTok's S-B Q-Former with Index Backpropagation Quantization over a
2^18-entry, 256-dim codebook (the IBQ paper's largest; docs/quantizers.md).

python -m gigatok_jax.main --config=configs/tokenizer_ibq.py --workdir=DIR --config.data.train_path=...

The codebook is what needs the mesh here: its 2^18 x 256 float32 rows are 256 MiB (768 MiB with
the AdamW moments), and the (tokens, codes) logits of one chip's batch, with their softmax and
gradient, are 1 GiB each per 1024 tokens. The default rules store the rows over `tensor` x `fsdp`
and split the logits over `tensor`. This recipe is fully sharded (mesh fsdp=-1, data=1: batch
and parameters over every chip, so it runs on any device count); on a pod, `--config.mesh.tensor=4`
also splits each chip's logits four ways (`--mode=aot` prints the bytes per chip of either).
`:tiny` keeps the structure (IBQ, 256-dim codes) with small widths and a 4096-entry codebook.
"""

from gigatok_jax import config


def get_config(variant: str = ""):
  v = config.parse_variant(variant, names=("tiny",))
  c = config.load_recipe("configs/tokenizer_sb.py" + (":tiny" if v.tiny else ""), key="--config")
  c.model.update(quantizer="ibq", codebook_size=2 ** 18, code_dim=256)
  c.mesh.update(data=1, fsdp=-1)
  if v.tiny:
    c.model.update(codebook_size=4096, code_dim=256)
  return c
