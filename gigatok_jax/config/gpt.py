"""The GPT recipe schema: every key a class-conditional GPT recipe may set, with its default and type
(docs/spec.md §4), and the small `:tiny` overrides.
"""

from __future__ import annotations

import ml_collections

from gigatok_jax.config import common

# GPT sizes (docs/spec.md §4.1): width, layers, heads.
GPT_SIZES = {
    "tiny": (64, 2, 2),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1280, 36, 20),
    "XXL": (1536, 48, 24),
}

# --mode=extract_codes: code sequences per image of each `extract.augment`.
EXTRACT_VIEWS = {"none": 1, "flip": 2, "ten_crop": 10}

GPT_AXIS_RULES = common.DEFAULT_AXIS_RULES + (
    ("vocab", "tensor"),
    ("classes", None),
)


def gpt_model_config(size: str = "B", position: str = "learned_1d") -> ml_collections.ConfigDict:
  w, l, h = GPT_SIZES[size]
  return ml_collections.ConfigDict(dict(
      width=w, layers=l, heads=h,
      vocab_size=16384,          # = the tokenizer's codebook size
      num_tokens=256,            # image tokens per sequence (the tokenizer's grid^2)
      num_classes=1000,          # + 1 null class for CFG
      position=position,         # 'learned_1d' (1D tokenizers) or 'rope_2d' (2D tokenizers)
      rope_base=10000.0,
      norm_eps=1e-5,
      class_dropout=0.1,
      token_dropout=0.1,
      resid_dropout=0.1,
      ffn_dropout=0.1,
      dtype="bfloat16",          # compute dtype; master weights stay param_dtype
      param_dtype="float32",
      remat="none",
      scan_layers=False,         # blocks as one lax.scan in training (decoding stays per block)
      # Training attention core (models/gpt.py): 'auto' = 'einsum' on the CPU backend, else 'xla'
      # (jax.nn.dot_product_attention, which picks cuDNN's fused kernel on GPUs); --mode=aot sets
      # 'xla' for its TPU targets. Decoding with the KV cache always uses the einsum core.
      attention="auto",
  ))


def gpt_config(size: str = "B", position: str = "learned_1d") -> ml_collections.ConfigDict:
  """A class-conditional GPT recipe on the codes of a trained tokenizer (docs/spec.md §4)."""
  c = ml_collections.ConfigDict()
  c.task = "gpt"
  common.run_keys(c, total_steps=1_500_000)   # 300 epochs at batch 256
  c.eval_every_steps = 5000          # validation loss on data.eval_codes_path ('' = no eval split)
  c.eval_num_batches = 10
  c.model = gpt_model_config(size, position)

  # The tokenizer whose codes the GPT models: its run directory (latest checkpoint, and the
  # config.json its training wrote) and optionally a recipe (file[:variant]) that replaces that
  # saved config. Used by --mode=extract_codes and --mode=sample.
  c.tokenizer = ml_collections.ConfigDict(dict(workdir="", recipe=""))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.95,
      weight_decay=0.05,             # on tensors with >= 2 dims only
      grad_clip=1.0,
      schedule="wsd",                # 'wsd' (warmup, stable, sqrt decay) or 'constant' (+ warmup)
      warmup_steps=5000,
      warmup_init_ratio=0.01,        # warm-up starts at lr / 100, as the official scheduler
      decay_fraction=0.2,            # wsd: the last 20% of total_steps decay to 0 (sqrt shape)
  ))

  c.data = ml_collections.ConfigDict(dict(
      codes_path="",                 # directory written by --mode=extract_codes (train split)
      eval_codes_path="",            # same for the validation split ('' = none)
      read_threads=8,
      worker_count=0,
  ))

  # --mode=extract_codes: images come from the tokenizer recipe's data group; these override its
  # paths. Each image gives 1 (augment='none'), 2 ('flip') or 10 ('ten_crop': 5 crops + mirrors)
  # code sequences; training picks one at random each time the image comes up.
  c.extract = ml_collections.ConfigDict(dict(
      split="train",                 # 'train' or 'eval' split of the tokenizer's data
      output="",                     # '' = <workdir>/codes/<split>
      image_train_path="",
      image_eval_path="",
      augment="none",                # 'none' | 'flip' | 'ten_crop'
      ten_crop_scale=1.1,            # ten_crop: crops of the centre square of side image_size * this
      batch_size=64,
      images_per_shard=4096,
      max_images=0,                  # 0 = the whole split
  ))

  c.sample = ml_collections.ConfigDict(dict(
      num_samples=50_000,
      batch_size=64,
      classes=(),                    # () = class i % num_classes for sample i; else cycle these
      cfg_scale=1.75,
      cfg_schedule="step",           # 'constant' or 'step' (no guidance for the first fraction)
      cfg_step_fraction=0.18,
      temperature=1.0,               # 0 = greedy
      top_k=0,                       # 0 = off
      top_p=1.0,                     # 1 = off
      seed=0,
      grid_images=64,                # images in the PNG grid
      output="",                     # '' = <workdir>/samples
  ))

  # --mode=eval: gFID / IS / precision-recall of --mode=sample output against a reference batch.
  c.eval = ml_collections.ConfigDict(dict(
      samples="",                    # a samples_*.npz; '' = the newest in <workdir>/samples
      fid_reference="",              # ADM reference batch .npz (mu, sigma, arr_0)
      inception_path="",             # converted FID Inception (python -m gigatok_jax.convert.inception)
      batch_size=100,
      precision_recall=True,         # needs the reference's arr_0 images
      protocol="adm",                # 'adm' (the papers' numbers) or 'pytorch_fid' (docs/evaluation.md)
  ))

  # --mode=probe: linear probe on the frozen GPT's mean-pooled features (docs/spec.md §4.5); train on
  # data.codes_path, report top-1 on data.eval_codes_path.
  c.probe = ml_collections.ConfigDict(dict(
      layer=0,                       # hidden state after this block; 0 = layers // 2
      epochs=90, warmup_epochs=10,
      batch_size=8192,               # the reference's 128 x 64 GPUs (unverified); lr scales with it
      base_lr=0.1,                   # lr = base_lr x batch_size / 256 (LARS)
      feature_batch_size=256,
  ))

  c.mesh = common.mesh_config(GPT_AXIS_RULES)
  c.distributed = common.distributed_config()
  return c


def gpt_tiny_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Same structure, small widths: tests and `:tiny` variants of the GPT recipes."""
  w, l, h = GPT_SIZES["tiny"]
  c.model.update(dict(width=w, layers=l, heads=h, vocab_size=512, num_tokens=16, num_classes=10,
                      dtype="float32"))
  c.global_batch_size = 8
  c.total_steps = 10
  c.checkpoint_every_steps = 5
  c.log_every_steps = 1
  c.eval_every_steps = 5
  c.eval_num_batches = 2
  c.optim.warmup_steps = 2
  c.sample.num_samples = 8
  c.sample.batch_size = 8
  c.sample.grid_images = 8
  c.extract.batch_size = 8
  return c
