"""Optimizers and learning-rate schedules (spec 3.3).

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


def decay_mask(params):
  """True for parameters that get weight decay (everything but norm scales/biases)."""
  def keep(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not any("norm" in n or n in ("ln_pre", "ln_post") for n in names)
  return jax.tree_util.tree_map_with_path(keep, params)


def adamw(optim_cfg, total_steps: int, lr: float) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = warmup_cosine(lr, optim_cfg.final_lr, optim_cfg.warmup_steps, total_steps,
                           optim_cfg.warmup_init_ratio)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                  mask=decay_mask),
  )
  return tx, schedule
