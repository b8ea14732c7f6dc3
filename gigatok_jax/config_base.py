"""The complete tokenizer config with defaults: every key a recipe may set, with its type.

Recipes in `configs/` start from `tokenizer_config()` and change sizes; `validate.py` checks any
config (including user-written ones) against this schema before anything is compiled.
Defaults are the paper's / reference code's values (docs/spec.md §3) unless a comment says otherwise.
"""

from __future__ import annotations

import ml_collections

from gigatok_jax.data import pipeline

# Transformer sizes shared by encoder and decoder (docs/spec.md §2.2): width, layers, heads.
SIZES = {
    "tiny": (256, 4, 4),
    "S": (512, 6, 8),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1280, 36, 20),
    "XXL": (1536, 48, 24),
}

# Logical axis name -> mesh axis (or None = replicated). The one list that decides how every
# parameter and activation is sharded; see parallel.py. Order matters: the first rule for a name wins.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("teacher_embed", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("z_channels", None),
    ("code_dim", None),
    ("codebook", None),
    ("position", None),
    ("norm", None),
    ("layers", None),          # the depth axis of layer stacks stored with model.scan_layers
)


def mesh_config(axis_rules) -> ml_collections.ConfigDict:
  """Mesh axes (parallel.py). data/fsdp/tensor: sizes within a slice (ICI), -1 = fill the slice;
  dcn_*: how many slices (TPU multi-slice, or hosts of a GPU cluster) each axis spans, usually
  dcn_data (data parallelism over the slow network). Mesh axis size = ICI size x DCN size."""
  return ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1,
      dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
      axis_rules=axis_rules,
  ))


def model_config(enc: str = "S", dec: str = "S", kind: str = "1d") -> ml_collections.ConfigDict:
  ew, el, eh = SIZES[enc]
  dw, dl, dh = SIZES[dec]
  return ml_collections.ConfigDict(dict(
      kind=kind,                 # '1d' (Q-Former) or '2d' (ViT on the grid)
      vit_layer_type="plain",    # 2d only: 'plain' (SA + MLP) or 'decoder' (self cross-attention)
      cnn_ch=128,
      cnn_ch_mult=(1, 1, 2, 2, 4),
      cnn_num_res_blocks=2,
      z_channels=256,
      enc_width=ew, enc_layers=el, enc_heads=eh,
      dec_width=dw, dec_layers=dl, dec_heads=dh,
      mlp_ratio=4.0,
      codebook_size=16384,
      code_dim=8,
      commitment=0.25,
      rotation_trick=True,
      entropy_temperature=0.01,
      distill_depth=3,           # decoder layer (1-indexed) feeding the semantic projector
      distill_dim=768,           # DINOv2-B/14 feature width
      dtype="float32",           # compute dtype: 'float32' or 'bfloat16'
      param_dtype="float32",     # master weights
      remat="none",              # per transformer layer and CNN res block: 'none', 'full', 'save_dots'
      scan_layers=False,         # transformer layers as one lax.scan: compile time flat in depth
  ))


def tokenizer_config(enc: str = "S", dec: str = "S", kind: str = "1d") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "tokenizer"
  # Keys launch scripts rely on (top level in every training recipe).
  c.total_steps = 1_000_000
  c.global_batch_size = 256
  c.checkpoint_every_steps = 5000
  c.max_checkpoints_to_keep = 3
  c.seed = 0
  # A fresh run (no checkpoint yet) starts from these weights: a run directory made by
  # `python -m gigatok_jax.convert` (or its pretrained/ dir). '' = random init, or the
  # workdir's own pretrained/ when a converter made the workdir.
  c.init_from = ""
  c.log_every_steps = 50
  c.image_every_steps = 5000
  c.eval_num_images = 16            # images in the reconstruction grid / reconstruct mode
  # --mode=eval: reconstruction metrics over the eval split (evaluate/tokenizer_eval.py).
  c.eval = ml_collections.ConfigDict(dict(
      num_images=50_000, batch_size=64,
      inception_path="",            # converted FID Inception (python -m gigatok_jax.convert.inception); '' = no rFID
      fid_reference="",             # ADM-style .npz with mu/sigma; '' = statistics of the evaluated originals
  ))

  c.model = model_config(enc, dec, kind)

  c.loss = ml_collections.ConfigDict(dict(
      reconstruction_weight=1.0,    # L2
      codebook_weight=1.0,          # vq term mean((z_q - sg z)^2); commitment weight is model.commitment
      entropy_weight=0.0,           # 0.005 for XL-XXL
      perceptual_weight=1.0,        # LPIPS-VGG; > 0 needs teachers.lpips_path
      semantic_weight=0.5,          # -cos to DINOv2 patch tokens; > 0 needs teachers.dinov2_path
      disc_weight=0.5,              # hinge generator loss weight, no adaptive weight
      disc_start_step=20_000,       # neither the GAN term nor the discriminator runs before this
      # Auxiliary losses of the reference, active while step < aux_loss_end (0 = off):
      # feature reconstruction MSE(sg(CNN encoder map), transformer decoder map) with this weight,
      # and, if shortcut_reconstruction, L2 of the CNN decoder applied to the CNN encoder map.
      aux_loss_end=0,
      feature_rec_weight=1.0,
      shortcut_reconstruction=False,
  ))

  # Frozen networks, loaded from converted local files (README "Semantic regularization and
  # perceptual loss"); nothing is downloaded and a missing file stops the run before compilation.
  # The DINOv2 input size is 14 x the tokenizer grid (224 px for 16 x 16), so that its patch tokens
  # match the decoder queries one to one.
  c.teachers = ml_collections.ConfigDict(dict(
      dinov2_path="",               # from `python -m gigatok_jax.convert.dinov2`
      lpips_path="",                # from `python -m gigatok_jax.convert.lpips`
  ))

  c.discriminator = ml_collections.ConfigDict(dict(
      kind="patchgan", ndf=64, n_layers=3,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4,
      b1=0.9,
      b2=0.95,
      weight_decay=1e-4,
      grad_clip=10.0,
      warmup_steps=0,               # linear from lr * warmup_init_ratio
      warmup_init_ratio=0.01,
      final_lr=1e-5,                # cosine floor
      disc_lr=1e-4,                 # same schedule shape as the generator
      ema_decay=0.0,                # 0 disables the EMA of generator weights (reference: 0.9999 if on)
  ))

  # Data keys and defaults are owned by the data package (data/pipeline.py: DEFAULTS).
  c.data = ml_collections.ConfigDict(dict(
      pipeline.DEFAULTS,
      source="array_record",        # real recipes train on prepared ArrayRecord shards
      reconstruct_input="",         # folder of images for --mode=reconstruct ('' = eval split)
  ))

  c.mesh = mesh_config(DEFAULT_AXIS_RULES)

  # Multi-process jobs (distributed.py). Unset ('' / -1) = JAX's own detection: SLURM, Cloud TPU
  # VMs, env JAX_COORDINATOR_ADDRESS; no cluster found = one process.
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",       # 'host:port' of process 0
      num_processes=-1,
      process_id=-1,
      initialization_timeout_s=300,  # wait this long for every process to connect, and at
                                     # the barrier after each program's first compile
      heartbeat_timeout_s=100,      # a process silent this long is dead: the others abort
  ))
  return c


def tiny_model_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Same structure, small widths: used by tests and `:tiny` recipe variants."""
  c.model.update(dict(
      cnn_ch=32, cnn_ch_mult=(1, 1, 2, 4), cnn_num_res_blocks=1, z_channels=64,
      enc_width=64, enc_layers=2, enc_heads=2,
      dec_width=64, dec_layers=3, dec_heads=2,
      codebook_size=512, distill_dim=32,
  ))
  c.data.image_size = 64
  c.data.source = "demo"
  c.global_batch_size = 4
  c.total_steps = 10
  c.checkpoint_every_steps = 5
  c.log_every_steps = 1
  c.image_every_steps = 5
  c.eval_num_images = 4
  c.loss.disc_start_step = 4
  # Tiny variants train without the frozen teachers (no weight files on test machines); the tests
  # that check the teacher wiring give them small random-weight teacher files.
  c.loss.perceptual_weight = 0.0
  c.loss.semantic_weight = 0.0
  return c


def with_variant(c: ml_collections.ConfigDict, variant: str,
                 tiny=None) -> ml_collections.ConfigDict:
  """Applies a recipe variant named after the colon: `--config=configs/x.py:tiny`.

  `tiny` is the overrides function (default: the tokenizer's; GPT recipes pass gpt_tiny_overrides).
  """
  if variant == "tiny":
    return (tiny or tiny_model_overrides)(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} (expected '' or 'tiny')")
  return c


# ------------------------------------------------------------------------------------------- GPT

# GPT sizes (docs/spec.md §4.1): width, layers, heads.
GPT_SIZES = {
    "tiny": (64, 2, 2),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1280, 36, 20),
    "XXL": (1536, 48, 24),
}

GPT_AXIS_RULES = DEFAULT_AXIS_RULES + (
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
  ))


def gpt_config(size: str = "B", position: str = "learned_1d") -> ml_collections.ConfigDict:
  """A class-conditional GPT recipe on the codes of a trained tokenizer (docs/spec.md §4)."""
  c = ml_collections.ConfigDict()
  c.task = "gpt"
  c.total_steps = 1_500_000          # 300 epochs at batch 256
  c.global_batch_size = 256
  c.checkpoint_every_steps = 5000
  c.max_checkpoints_to_keep = 3
  c.seed = 0
  # A fresh run (no checkpoint yet) starts from these weights: a run directory made by
  # `python -m gigatok_jax.convert` (or its pretrained/ dir). '' = random init, or the
  # workdir's own pretrained/ when a converter made the workdir.
  c.init_from = ""
  c.log_every_steps = 50
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

  c.mesh = mesh_config(GPT_AXIS_RULES)
  c.distributed = tokenizer_config().distributed
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




def load_recipe(spec: str, key: str = "tokenizer.recipe") -> ml_collections.ConfigDict:
  """A recipe from 'path/to/recipe.py[:variant]' (as --config takes it); `key` names it in errors."""
  import importlib.util
  import os
  from gigatok_jax.errors import ConfigError
  path, _, variant = spec.partition(":")
  repo_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
  if path and not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(repo_path):
    path = repo_path   # e.g. configs/x.py from outside the checkout (editable install)
  if not path or not os.path.isfile(path):
    raise ConfigError(key, f"recipe file {path!r} not found (expected e.g. configs/tokenizer_ss.py)")
  module_spec = importlib.util.spec_from_file_location(f"_recipe_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(variant)
  except ValueError as e:
    raise ConfigError(key, f"{spec}: {e}") from None
