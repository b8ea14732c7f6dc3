"""Fused GroupNorm -> per-(sample, channel) affine -> optional swish, with a hand-written VJP.

Why not plain jnp + autodiff: in the CNN halves of the tokenizer at 256 px the activations are
large (B x 256 x 256 x 128) and cheap to compute on, so the step time there is memory passes.
Autodiff of `mean/var/normalise/affine/swish` reduces over (H, W, channels-in-group) with the group
axis in the middle of the layout, which XLA:CPU runs as slow strided reductions, and it keeps
several intermediates alive. Here every reduction is over (H, W) only, keeping the channel axis
minor and contiguous (per-channel sums, then a tiny sum over the channels of each group), and the
backward pass reads only `x` and the incoming gradient: two passes forward (stats, output) and two
backward (per-channel sums, input gradient). This roughly halves the norm's share of the step
(see bench/tokenizer_step.py and the issue note).

Statistics are float32 whatever the input dtype; the variance is the biased one (torch GroupNorm).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _group_mean(per_channel: jax.Array, num_groups: int) -> jax.Array:
  """(B, C) per-channel means -> (B, C) mean of each channel's group, broadcast back."""
  b, c = per_channel.shape
  g = per_channel.reshape(b, num_groups, c // num_groups).mean(-1, keepdims=True)
  return jnp.broadcast_to(g, (b, num_groups, c // num_groups)).reshape(b, c)


def _stats(x32: jax.Array, num_groups: int, eps: float) -> tuple[jax.Array, jax.Array]:
  """x (B, H, W, C) float32 -> per-channel (B, C) group mean and reciprocal std."""
  mean = _group_mean(x32.mean(axis=(1, 2)), num_groups)                          # (B, C)
  var = _group_mean(jnp.square(x32 - mean[:, None, None, :]).mean(axis=(1, 2)), num_groups)
  return mean, jax.lax.rsqrt(var + eps)


def _swish_and_grad(y: jax.Array) -> tuple[jax.Array, jax.Array]:
  s = jax.nn.sigmoid(y)
  return y * s, s * (1.0 + y * (1.0 - s))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, num_groups: int, eps: float,
               swish: bool) -> jax.Array:
  """swish?((x - mean_g) / std_g * scale + shift) for NHWC `x`.

  x (B, H, W, C); scale and shift (B, C) float32 (broadcast a (C,) affine with `jnp.broadcast_to`;
  its gradient then sums over B outside this op). Groups are contiguous channel blocks, as in torch.
  Returns x's dtype.
  """
  out, _ = _forward(x, scale, shift, num_groups, eps, swish)
  return out


def _forward(x, scale, shift, num_groups, eps, swish):
  x32 = x.astype(jnp.float32)
  mean, rstd = _stats(x32, num_groups, eps)
  y = ((x32 - mean[:, None, None, :]) * (rstd * scale)[:, None, None, :]
       + shift[:, None, None, :])
  if swish:
    y = _swish_and_grad(y)[0]
  return y.astype(x.dtype), (x, scale, shift, mean, rstd)


def _backward(num_groups, eps, swish, residuals, g):
  del eps
  x, scale, shift, mean, rstd = residuals
  x32 = x.astype(jnp.float32)
  xhat = (x32 - mean[:, None, None, :]) * rstd[:, None, None, :]                 # (B, H, W, C)
  g = g.astype(jnp.float32)
  if swish:
    g = g * _swish_and_grad(xhat * scale[:, None, None, :] + shift[:, None, None, :])[1]
  # Per-(sample, channel) sums over (H, W): the whole backward needs only these two.
  sum_g = g.sum(axis=(1, 2))                                                      # (B, C)
  sum_g_xhat = (g * xhat).sum(axis=(1, 2))                                        # (B, C)
  n_hw = x.shape[1] * x.shape[2]
  # d xhat = g * scale; dx = rstd * (dxhat - mean_group(dxhat) - xhat * mean_group(dxhat * xhat)).
  m1 = _group_mean(sum_g * scale, num_groups) / n_hw
  m2 = _group_mean(sum_g_xhat * scale, num_groups) / n_hw
  dx = rstd[:, None, None, :] * (g * scale[:, None, None, :] - m1[:, None, None, :]
                                 - xhat * m2[:, None, None, :])
  return dx.astype(x.dtype), sum_g_xhat, sum_g


def _fwd_rule(x, scale, shift, num_groups, eps, swish):
  return _forward(x, scale, shift, num_groups, eps, swish)


group_norm.defvjp(_fwd_rule, _backward)
