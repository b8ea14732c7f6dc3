"""The official GigaTok training settings each recipe reproduces, key by key, and the differences we
keep on purpose (with the reason). tests/test_official_settings.py resolves every recipe and checks
it against this table; docs/official_settings.md gives the sources in prose.

Values were read from the official repository (SilentView/GigaTok: configs/vq/*.yaml, the trainers'
argparse defaults and loss code, scripts/, Detailed_instructions.md); `source` names the file:line of
each group. Keys are our config keys; values are what the official run used, in our units.
"""

from __future__ import annotations

# Shared by every tokenizer recipe (configs/vq/VQ_SS256.yaml:4-83, vq_loss.py, scheduler.py).
_TOKENIZER = {
    "model.codebook_size": 16384, "model.code_dim": 8, "model.commitment": 0.25,
    "model.entropy_temperature": 0.01, "model.rotation_trick": True,
    "model.cnn_ch_mult": (1, 1, 2, 2, 4), "model.z_channels": 256,
    "loss.reconstruction_weight": 1.0, "loss.perceptual_weight": 1.0, "loss.semantic_weight": 0.5,
    "loss.feature_rec_weight": 1.0, "loss.disc_weight": 0.5, "loss.disc_start_step": 20000,
    "discriminator.kind": "patchgan", "discriminator.ndf": 64, "discriminator.n_layers": 3,
    "model.distill_depth": 3, "model.distill_dim": 768,
    "optim.lr": 1e-4, "optim.b1": 0.9, "optim.b2": 0.95, "optim.weight_decay": 1e-4,
    "optim.grad_clip": 10.0, "optim.final_lr": 1e-5, "optim.warmup_init_ratio": 0.01,
    "optim.disc_lr": 1e-4, "optim.ema_decay": 0.0, "data.image_size": 256,
    "data.crop_max_scale": 1.25, "data.random_flip": True, "checkpoint_every_steps": 5000,
}
# The DDP-trained recipes (S-S, S-B, B-L and the 2D ones): aux losses for 15k steps, shortcut on,
# weight decay on every parameter (vq_train.py:335,353-358), fp16 (train_vq_and_eval.sh:21).
_DDP = {"loss.aux_loss_end": 15000, "loss.shortcut_reconstruction": True,
        "optim.decay_norms": True, "model.dtype": "float16"}
_FP32 = ("float32 compute: fp16 needs loss scaling and TPUs run bf16; the project's parity and "
         "resume guarantees are stated in float32 (model.dtype='bfloat16' trains faster)")

# Shared by every GPT recipe (autoregressive/train/train_c2i.py:61-62,636-659, scheduler.py:14-16,65).
_GPT = {
    "optim.lr": 1e-4, "optim.b1": 0.9, "optim.b2": 0.95, "optim.weight_decay": 0.05,
    "optim.grad_clip": 1.0, "optim.warmup_init_ratio": 0.01,
    "model.resid_dropout": 0.1, "model.ffn_dropout": 0.1, "model.token_dropout": 0.1,
    "model.class_dropout": 0.1, "model.vocab_size": 16384, "model.num_tokens": 256,
    "model.num_classes": 1000, "model.position": "learned_1d", "checkpoint_every_steps": 5000,
    "extract.augment": "ten_crop", "extract.ten_crop_scale": 1.1, "model.dtype": "float16",
}
def _gpt_run(width, layers, heads, *, batch=256, steps=1_500_000, warmup=5000) -> dict:
  """Model sizes and the WSD run of 300 epochs (train_c2i_and_eval.sh defaults)."""
  return {"model.width": width, "model.layers": layers, "model.heads": heads,
          "global_batch_size": batch, "total_steps": steps, "optim.warmup_steps": warmup,
          "optim.schedule": "wsd", "optim.decay_fraction": 0.2}


_BF16 = "bf16 compute: TPUs have no fp16 matmul path and bf16 needs no loss scaling"

RECIPES = {
    "tokenizer_ss": {
        "source": "configs/vq/VQ_SS256.yaml (VQ_SS256_e100.pt)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 128, "total_steps": 1_000_000,
                   "loss.entropy_weight": 0.0, "optim.warmup_steps": 0},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_sb": {
        "source": "configs/vq/VQ_SB256.yaml (VQ_SB256_e200.pt)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 128, "total_steps": 2_000_000,
                   "loss.entropy_weight": 0.0, "optim.warmup_steps": 0},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_bl": {
        "source": "configs/vq/VQ_BL256.yaml (VQ_BL256_e200.pt)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 256, "total_steps": 1_000_000,
                   "loss.entropy_weight": 0.0, "optim.warmup_steps": 0},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_bl_dino_disc": {
        "source": "configs/vq/VQ_BL256_dino_disc.yaml (VQ_BL256_dino_disc.pt)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 256, "total_steps": 1_000_000,
                   "loss.entropy_weight": 0.0, "optim.warmup_steps": 0,
                   "discriminator.kind": "dinodisc", "loss.disc_start_step": 80000},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_xlxxl": {
        "source": "configs/vq/VQ_XLXXL256.yaml (VQ_XLXXL256_e300.pt, FSDP trainer)",
        "values": {**_TOKENIZER, "global_batch_size": 256, "total_steps": 1_500_000,
                   "loss.entropy_weight": 0.005, "optim.warmup_steps": 5000,
                   "loss.aux_loss_end": 0, "loss.shortcut_reconstruction": False,
                   "optim.decay_norms": False, "model.dtype": "bfloat16"},
        "on_purpose": {},
    },
    "tokenizer_ss_2d": {
        "source": "configs/vq/VQ_SS256_2d.yaml (no released checkpoint)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 128, "loss.entropy_weight": 0.0,
                   "optim.warmup_steps": 0, "model.vit_layer_type": "decoder"},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_sb_2d": {
        "source": "configs/vq/VQ_SB256_2d.yaml (no released checkpoint)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 128, "loss.entropy_weight": 0.0,
                   "optim.warmup_steps": 0, "model.vit_layer_type": "plain"},
        "on_purpose": {"model.dtype": _FP32},
    },
    "tokenizer_bl_2d": {
        "source": "configs/vq/VQ_BL256_2d.yaml (no released checkpoint)",
        "values": {**_TOKENIZER, **_DDP, "global_batch_size": 256, "loss.entropy_weight": 0.005,
                   "optim.warmup_steps": 0, "model.vit_layer_type": "plain"},
        "on_purpose": {"model.dtype": _FP32},
    },
    "gpt_b": {
        "source": "GPT-B, scripts/composite_cmd/train_c2i_and_eval.sh; Detailed_instructions.md:248-266",
        "values": {**_GPT, **_gpt_run(768, 12, 12)},
        "on_purpose": {"model.dtype": _BF16},
    },
    "gpt_xl": {
        "source": "GPT_XL256_e300_VQ_BL.pt (README.md:87); batch and warm-up from the script defaults",
        "values": {**_GPT, **_gpt_run(1280, 36, 20)},
        "on_purpose": {"model.dtype": _BF16},
    },
    "gpt_xxl": {
        "source": "GPT-XXL FSDP recipe, Detailed_instructions.md:270-291",
        "values": {**_GPT, **_gpt_run(1536, 48, 24, batch=512, steps=750_000, warmup=200)},
        "on_purpose": {"model.dtype": _BF16},
    },
    "gpt_b_probe": {
        "source": "AR probing, scripts/composite_cmd/train_vq_and_eval.sh:77-94",
        "values": {**_GPT, "global_batch_size": 256, "total_steps": 250_000,
                   "optim.warmup_steps": 0, "optim.schedule": "wsd"},
        "on_purpose": {"model.dtype": _BF16,
                       "optim.schedule": "constant: the official WSD run is stopped at 250k, long "
                                         "before its decay starts at 1.2M, so the lr is the same"},
    },
}
