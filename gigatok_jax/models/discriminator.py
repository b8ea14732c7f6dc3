"""PatchGAN discriminator (pix2pix / taming NLayerDiscriminator; docs/spec.md §3.2).

conv(3 -> ndf, 4x4 s2) + LeakyReLU(0.2); then n_layers - 1 stride-2 and one stride-1 conv without
bias + BatchNorm + LeakyReLU, doubling channels up to 8 * ndf; a final 4x4 s1 conv to 1 logit map.
Init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) (taming's weights_init).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gigatok_jax.models.layers import Conv, KeyGen, param, zeros


class BatchNorm(nnx.Module):
  """BatchNorm over (N, H, W) with running statistics (torch momentum 0.1, eps 1e-5).

  In training the batch statistics are used and the running ones updated; the train step runs
  under jit over the global batch, so the statistics are those of the global batch.
  """

  def __init__(self, channels: int, *, rngs: KeyGen, momentum: float = 0.1, eps: float = 1e-5):
    self.scale = param(rngs, lambda k, s, d: 1.0 + 0.02 * jax.random.normal(k, s, d), (channels,),
                       ("norm",))
    self.bias = param(rngs, zeros, (channels,), ("norm",))
    self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32), out_sharding=("norm",),
                             eager_sharding=False)
    self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32), out_sharding=("norm",),
                             eager_sharding=False)
    self.momentum = momentum
    self.eps = eps

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x32 = x.astype(jnp.float32)
    if train:
      mean = x32.mean(axis=(0, 1, 2))
      var = jnp.square(x32 - mean).mean(axis=(0, 1, 2))
      n = x32.shape[0] * x32.shape[1] * x32.shape[2]
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
    else:
      mean, var = self.mean[...], self.var[...]
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


class PatchGANDiscriminator(nnx.Module):
  def __init__(self, *, ndf: int = 64, n_layers: int = 3, rngs, dtype=jnp.float32):
    rngs = KeyGen(rngs)
    init = lambda k, s, d: 0.02 * jax.random.normal(k, s, d)  # noqa: E731
    kw = dict(rngs=rngs, kernel_init=init, dtype=dtype)
    convs, norms = [Conv(3, ndf, 4, stride=2, padding=1, **kw)], [None]
    mult = 1
    for n in range(1, n_layers + 1):
      prev, mult = mult, min(2 ** n, 8)
      stride = 2 if n < n_layers else 1
      convs.append(Conv(ndf * prev, ndf * mult, 4, stride=stride, padding=1, use_bias=False, **kw))
      norms.append(BatchNorm(ndf * mult, rngs=rngs))
    convs.append(Conv(ndf * mult, 1, 4, stride=1, padding=1, **kw))
    norms.append(None)
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    # (B, H, W, 3) -> (B, h, w, 1) patch logits
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = conv(x)
      if norm is not None:
        x = norm(x, train)
      if i < len(self.convs) - 1:
        x = jax.nn.leaky_relu(x, 0.2)
    return x.astype(jnp.float32)
