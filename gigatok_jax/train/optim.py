"""Optimizers and learning-rate schedules (tokenizer: docs/spec.md §3.3; GPT: docs/spec.md §4.2).

AdamW with gradient clipping, linear warm-up from `lr * warmup_init_ratio`, then cosine decay to
`final_lr` at `total_steps`. Weight decay skips parameters whose path contains "norm" (LayerNorm /
GroupNorm / BatchNorm scales and biases), as the reference FSDP trainer does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(lr: float, final_lr: float, warmup_steps: int, total_steps: int,
                  warmup_init_ratio: float = 0.01) -> optax.Schedule:
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * (warmup_init_ratio + (1.0 - warmup_init_ratio) * step / max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = final_lr + 0.5 * (lr - final_lr) * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)
  return schedule


def warmup_stable_decay(lr: float, warmup_steps: int, total_steps: int,
                        decay_fraction: float, warmup_init_ratio: float = 0.0) -> optax.Schedule:
  """WSD (docs/spec.md §4.2): linear warm-up from lr * warmup_init_ratio (the official scheduler
  starts at lr / 100), constant, then the last `decay_fraction` of the steps decay to 0 with a
  1 - sqrt(progress) shape. decay_fraction 0 = constant after warm-up."""
  decay_start = total_steps - int(round(decay_fraction * total_steps))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = (jnp.minimum(1.0, warmup_init_ratio + (1.0 - warmup_init_ratio) * step / warmup_steps)
            if warmup_steps > 0 else 1.0)
    progress = jnp.clip((step - decay_start) / max(total_steps - decay_start, 1), 0.0, 1.0)
    return lr * warm * (1.0 - jnp.sqrt(progress))
  return schedule


def matrices_only(params):
  """True for tensors with >= 2 dims: the GPT's weight-decay mask (LlamaGen)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def decay_all(params):
  """True for every parameter: the official DDP tokenizer trainer decays norms too."""
  return jax.tree.map(lambda _: True, params)


def decay_mask(params):
  """True for parameters that get weight decay (everything but norm scales/biases)."""
  def keep(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not any("norm" in n or n in ("ln_pre", "ln_post") for n in names)
  return jax.tree_util.tree_map_with_path(keep, params)


def top_level_mask(params, names: tuple[str, ...]):
  """True for every parameter under one of the top-level modules `names`."""
  return {k: jax.tree.map(lambda _, on=k in names: on, v) for k, v in params.items()}


def cnn_mask(params):
  """True for the tokenizer's CNN encoder and decoder (top-level 'encoder' / 'decoder')."""
  return top_level_mask(params, ("encoder", "decoder"))


def codebook_mask(params):
  """True for the tokenizer's codebook (top-level 'quantize')."""
  return top_level_mask(params, ("quantize",))


def adamw(optim_cfg, total_steps: int, lr: float, *, schedule: optax.Schedule | None = None,
          mask=decay_mask, cnn_lr_scale: float = 1.0, codebook_lr_scale: float = 1.0
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip + AdamW; the default schedule is the tokenizer's warm-up + cosine.

  `cnn_lr_scale` != 1 multiplies the updates of the CNN encoder/decoder (their lr and weight
  decay) by it, `codebook_lr_scale` those of the codebook. At 1 the transformation and its state
  are exactly the reference's, so checkpoints of other runs keep their layout.
  """
  if schedule is None:
    schedule = warmup_cosine(lr, optim_cfg.final_lr, optim_cfg.warmup_steps, total_steps,
                             optim_cfg.warmup_init_ratio)
  parts = [
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                  mask=mask),
  ]
  if cnn_lr_scale != 1.0:
    parts.append(optax.masked(optax.scale(cnn_lr_scale), cnn_mask))
  if codebook_lr_scale != 1.0:
    parts.append(optax.masked(optax.scale(codebook_lr_scale), codebook_mask))
  return optax.chain(*parts), schedule


def gpt_adamw(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The GPT optimizer (docs/spec.md §4.2): WSD or constant lr, decay on >= 2-D tensors only."""
  decay = optim_cfg.decay_fraction if optim_cfg.schedule == "wsd" else 0.0
  schedule = warmup_stable_decay(optim_cfg.lr, optim_cfg.warmup_steps, total_steps, decay,
                                 optim_cfg.get("warmup_init_ratio", 0.0))
  return adamw(optim_cfg, total_steps, optim_cfg.lr, schedule=schedule, mask=matrices_only)
