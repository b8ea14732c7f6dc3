"""The tokenizer recipe schema: every key a tokenizer recipe may set, with its default and type.

Recipes in `configs/` start from `tokenizer_config()` and change sizes; `config/validate.py` checks
any config (including user-written ones) against this schema before anything is compiled.
Defaults are the paper's / reference code's values (docs/spec.md §3) unless a comment says otherwise.
"""

from __future__ import annotations

import ml_collections

from gigatok_jax.config import common
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


def model_config(enc: str = "S", dec: str = "S", kind: str = "1d") -> ml_collections.ConfigDict:
  ew, el, eh = SIZES[enc]
  dw, dl, dh = SIZES[dec]
  return ml_collections.ConfigDict(dict(
      kind=kind,                 # '1d' (Q-Former) or '2d' (ViT on the grid)
      vit_layer_type="plain",    # 2d only: 'plain' (SA + MLP) or 'decoder' (self cross-attention)
      cnn_ch=128,
      cnn_ch_mult=(1, 1, 2, 2, 4),
      cnn_num_res_blocks=2,
      # GroupNorm groups of the CNN halves (reference: 32; every CNN channel count must be a
      # multiple). Narrow CNNs (cnn_ch 16, configs/demo.py) need fewer: a group of one channel is an
      # instance norm, which fixes each channel's spatial mean before conv_out.
      cnn_norm_groups=32,
      z_channels=256,
      enc_width=ew, enc_layers=el, enc_heads=eh,
      dec_width=dw, dec_layers=dl, dec_heads=dh,
      mlp_ratio=4.0,
      # 1d only: where the Q-Former decoder's queries start. 'first_token' (the reference): every
      # query is the first token plus its learned position embedding, so the decoder must learn
      # from scratch which tokens describe which place. 'unpool' (ours, no new weights): each grid
      # cell starts from the mean of the tokens whose multi-level pooling region (the encoder's
      # query layout) contains it; short runs (configs/demo.py) get spatial layout much sooner.
      # Official checkpoints import with the reference values of both keys (convert/release.py).
      dec_query_init="first_token",
      # 1d only: latent tokens per image; 0 = grid^2 (the reference). Any count from 1 to
      # 2 * grid^2: the encoder's queries are the first N regions of the multi-level pooling series
      # 1 + 1 + 2 + 4 + ... + grid^2 (models/qformer.py `_pool_regions` states the rule for counts
      # that are no sum of the series), and the GPT's sequence length follows.
      num_latent_tokens=0,
      # 'vq' (GigaTok: l2-normalised codes, rotation trick), 'ibq' (index backpropagation: every
      # codebook row trained at every step) or 'fsq' (finite scalar quantization: code_dim channels
      # with fsq_levels values each, codebook_size = their product). docs/quantizers.md.
      quantizer="vq",
      # 1d only, FlexTok-style ordered tokens: () = off; else prefix lengths, e.g. (1, 2, 4, ...,
      # N). Training decodes each image from the first k tokens (k drawn uniformly from this
      # set; the rest become a learned mask token), so one tokenizer decodes from any prefix;
      # --mode=eval then reports quality per length (docs/quantizers.md).
      nested_dropout=(),
      fsq_levels=(),
      codebook_size=16384,
      code_dim=8,
      commitment=0.25,           # vq / ibq
      rotation_trick=True,       # vq
      entropy_temperature=0.01,  # vq / ibq
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
  common.run_keys(c, total_steps=1_000_000)
  c.image_every_steps = 5000
  c.eval_num_images = 16            # images in the reconstruction grid / reconstruct mode
  # --mode=eval: reconstruction metrics over the eval split (evaluate/tokenizer_eval.py).
  c.eval = ml_collections.ConfigDict(dict(
      num_images=50_000, batch_size=64,
      inception_path="",            # converted FID Inception (python -m gigatok_jax.convert.inception); '' = no rFID
      fid_reference="",             # ADM-style .npz with mu/sigma; '' = statistics of the evaluated originals
      protocol="adm",               # 'adm' (the papers' numbers) or 'pytorch_fid' (docs/evaluation.md)
      precision_recall=True,        # keeps every pool row of both sets (8 KB per image each)
      # Nested-dropout tokenizers (model.nested_dropout): --mode=reconstruct decodes from the
      # first num_tokens tokens (0 = all); --mode=eval scores every length of model.nested_dropout
      # and writes a quality-vs-tokens plot.
      num_tokens=0,
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
      # and, if shortcut_reconstruction, L2 (plus LPIPS when perceptual_weight > 0) of the CNN
      # decoder applied to the CNN encoder map.
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
      dino_disc_path="",            # discriminator.kind='dinodisc': the DINO ViT-S/16 backbone, from
                                    # `python -m gigatok_jax.convert.dino_discriminator`
  ))

  c.discriminator = ml_collections.ConfigDict(dict(
      kind="patchgan",              # 'patchgan' or 'dinodisc' (frozen DINO ViT-S/16 + trained heads;
                                    # needs teachers.dino_disc_path; models/dino_discriminator.py)
      ndf=64, n_layers=3,           # PatchGAN sizes
      kernel_size=9,                # dinodisc: the residual conv1d's kernel
      depth=12,                     # dinodisc: backbone blocks (12 = DINO ViT-S/16; fewer for tests)
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4,
      b1=0.9,
      b2=0.95,
      weight_decay=1e-4,
      decay_norms=False,            # True: decay norm scales/biases too (the official DDP trainer);
                                    # False: skip them (the official FSDP trainer, XL-XXL)
      grad_clip=10.0,
      warmup_steps=0,               # linear from lr * warmup_init_ratio
      warmup_init_ratio=0.01,
      final_lr=1e-5,                # cosine floor
      disc_lr=1e-4,                 # same schedule shape as the generator
      cnn_lr_scale=1.0,             # the CNN encoder/decoder's lr = lr * this (reference: 1)
      codebook_lr_scale=1.0,        # the codebook's lr = lr * this (reference: 1)
      ema_decay=0.0,                # 0 disables the EMA of generator weights (reference: 0.9999 if on)
  ))

  # Data keys and defaults are owned by the data package (data/pipeline.py: DEFAULTS).
  c.data = ml_collections.ConfigDict(dict(
      pipeline.DEFAULTS,
      source="array_record",        # real recipes train on prepared ArrayRecord shards
      reconstruct_input="",         # folder of images for --mode=reconstruct ('' = eval split)
  ))

  c.mesh = common.mesh_config(common.DEFAULT_AXIS_RULES)

  c.distributed = common.distributed_config()
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
