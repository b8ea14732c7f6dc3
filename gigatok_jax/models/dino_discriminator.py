"""GigaTok's DINO discriminator (`discriminator.kind = 'dinodisc'`, the released B-L dino-disc model).

A frozen DINO ViT-S/16 reads the image; five trained heads score its token maps. Facts from the
official configs/vq/VQ_BL256_dino_disc.yaml and its discriminator (docs/official_settings.md):

  input (B, H, W, 3) in [-1, 1] -> ImageNet normalisation -> 224 x 224: when H and W exceed 224,
  half of the calls take one random 224 crop (the same offset for the whole batch), the others an
  area resize ('area' = adaptive average pooling); smaller images a torch-bicubic resize
  -> ViT-S/16 (width 384, 6 heads, 12 pre-norm blocks (`discriminator.depth`; fewer drop the
     deeper readouts, as the official `depth` argument), LayerNorm eps 1e-6, MLP with tanh-GELU,
  no final norm), the attention's key bias zeroed when the weights are loaded
  -> readouts: patch tokens + cls token, after the position embedding and after blocks 2, 5, 8, 11:
     five (B, 196, 384) maps
  -> one head per map: [conv1d k=1 -> BatchNormLocal -> LeakyReLU(0.2)]
                       -> residual [conv1d k=9, circular padding -> BN -> LeakyReLU], (f(x) + x)/sqrt(2)
                       -> conv1d k=1 to one logit per token
     every conv1d has a bias and spectral normalisation (one power iteration per call in training)
  -> logits (B, 5 x 196).

BatchNormLocal splits the batch into G = ceil(B / 8) groups of B / G consecutive samples and
normalises with each group's statistics (over its samples and tokens, biased variance, eps 1e-6);
it keeps no running statistics. Spectral
normalisation divides each conv weight W (out, in * k) by sigma = u . W v; in training every call
first does one power iteration (v = normalise(W^T u), u = normalise(W v), with torch's
max(norm, 1e-12)), and u, v are state (`nnx.BatchStat`) carried in the train state. The backbone is
not part of this module: it is a frozen teacher (`train/teachers.py`), so it takes no optimizer
state and no checkpoint space.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.models import dinov2, layers
from gigatok_jax.models.layers import KeyGen, param

MODEL_NAME = "dino_vits16"      # the "model" entry of a converted backbone file
WIDTH, HEADS, DEPTH, PATCH, SIZE = 384, 6, 12, 16, 224
KEY_DEPTHS = (2, 5, 8, 11)      # blocks whose output feeds a head (plus the embedding: 5 heads)
LN_EPS = 1e-6
SN_EPS = 1e-12                  # torch spectral_norm's normalise eps
VIRTUAL_BATCH = 8


# ------------------------------------------------------------------------------------------------
# the frozen backbone
# ------------------------------------------------------------------------------------------------
class Block(nnx.Module):
  """Pre-norm ViT block: x += attn(norm1(x)); x += mlp(norm2(x)); tanh-GELU MLP."""

  def __init__(self, *, rngs, dtype=jnp.float32):
    self.norm1 = layers.LayerNorm(WIDTH, rngs=rngs, eps=LN_EPS, dtype=dtype)
    self.attn = layers.Attention(WIDTH, HEADS, rngs=rngs, dtype=dtype)
    self.norm2 = layers.LayerNorm(WIDTH, rngs=rngs, eps=LN_EPS, dtype=dtype)
    self.mlp = layers.Mlp(WIDTH, 4 * WIDTH, rngs=rngs, dtype=dtype,
                          activation=lambda x: jax.nn.gelu(x, approximate=True))

  def __call__(self, x):
    h = self.norm1(x)
    x = x + self.attn(h, h, h)
    return x + self.mlp(self.norm2(x))


def key_depths(depth: int) -> tuple[int, ...]:
  """The blocks read out for a backbone of `depth` blocks (the official DinoDisc's `depth` argument
  drops the key depths beyond it); the heads are one more (the embedding's readout)."""
  return tuple(d for d in KEY_DEPTHS if d < depth)


class PatchEmbed(nnx.Module):
  """Conv 16 x 16 / stride 16 with bias as one matmul over the patches (a dot, fast on every
  backend and XLA optimisation level): (B, 224, 224, 3) -> (B, 196, 384). kernel is HWIO."""

  def __init__(self, *, rngs: KeyGen, dtype=jnp.float32):
    self.dtype = dtype
    self.kernel = param(rngs, layers.trunc_normal_02, (PATCH, PATCH, 3, WIDTH),
                        (None, None, None, "embed"))
    self.bias = param(rngs, layers.zeros, (WIDTH,), ("embed",))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    g = x.astype(self.dtype).reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c)
    y = jnp.einsum("bipjqc,pqco->bijo", g, self.kernel[...].astype(self.dtype))
    return y.reshape(b, -1, WIDTH) + self.bias[...].astype(self.dtype)


class DinoViTSmall(nnx.Module):
  """The frozen DINO ViT-S/16 of the discriminator: (B, 224, 224, 3) normalised images -> the
  readouts (B, 196, 384) each, float32 (five for the official depth 12)."""

  def __init__(self, *, rngs, dtype=jnp.float32, depth: int = DEPTH):
    rngs = KeyGen(rngs)
    self.dtype = dtype
    self.patch_embed = PatchEmbed(rngs=rngs, dtype=dtype)
    self.cls_token = param(rngs, layers.trunc_normal_02, (1, 1, WIDTH), (None, None, "embed"))
    self.pos_embed = param(rngs, layers.trunc_normal_02, (1, (SIZE // PATCH) ** 2 + 1, WIDTH),
                           (None, None, "embed"))
    self.key_depths = key_depths(depth)
    self.blocks = nnx.List([Block(rngs=rngs, dtype=dtype)
                            for _ in range(max(depth, 1 + max(self.key_depths, default=-1)))])

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    b = x.shape[0]
    h = self.patch_embed(x).astype(jnp.float32)                          # (B, 196, 384)
    cls = jnp.broadcast_to(self.cls_token[...].astype(jnp.float32), (b, 1, WIDTH))
    h = jnp.concatenate([cls, h], axis=1) + self.pos_embed[...].astype(jnp.float32)  # (B, 197, 384)
    readouts = [h[:, 1:] + h[:, :1]]
    for i, block in enumerate(self.blocks):
      h = block(h.astype(self.dtype))
      if i in self.key_depths:
        readouts.append(h[:, 1:].astype(jnp.float32) + h[:, :1].astype(jnp.float32))
    return readouts


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's 'area' resize (adaptive average pooling): output i averages
  inputs floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def backbone_input(images: jax.Array, crop: jax.Array | None = None) -> jax.Array:
  """[-1, 1] (B, H, W, 3) -> (B, 224, 224, 3) ImageNet-normalised backbone input.

  `crop`: None for the resize branch, or (top, left) int32 offsets of the 224 crop (only when H and
  W exceed 224).
  """
  mean = jnp.asarray(dinov2.IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(dinov2.IMAGENET_STD, jnp.float32)
  x = images.astype(jnp.float32) * (0.5 / std) + (0.5 - mean) / std  # ((x + 1) / 2 - m) / s
  _, h, w, _ = x.shape
  if crop is not None:
    return jax.lax.dynamic_slice(x, (0, crop[0], crop[1], 0), (x.shape[0], SIZE, SIZE, 3))
  if h > SIZE:
    return jnp.einsum("ih,jw,bhwc->bijc", area_matrix(h, SIZE), area_matrix(w, SIZE), x,
                      precision=jax.lax.Precision.HIGHEST)
  return dinov2.torch_bicubic_resize(x, (SIZE, SIZE))


def random_backbone_input(images: jax.Array, key: jax.Array) -> jax.Array:
  """The official choice per call: a random crop with probability 1/2 when both sides exceed 224,
  else the resize."""
  _, h, w, _ = images.shape
  if h <= SIZE or w <= SIZE:
    return backbone_input(images)
  k_choice, k_top, k_left = jax.random.split(key, 3)
  crop = (jax.random.randint(k_top, (), 0, h - SIZE + 1), jax.random.randint(k_left, (), 0, w - SIZE + 1))
  return jax.lax.cond(jax.random.uniform(k_choice) <= 0.5,
                      lambda: backbone_input(images, crop), lambda: backbone_input(images))


# ------------------------------------------------------------------------------------------------
# the trained heads
# ------------------------------------------------------------------------------------------------
def _normalise(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


class SpectralConv1d(nnx.Module):
  """Conv1d with bias and spectral normalisation on (B, L, Cin) -> (B, L, Cout).

  `weight` is (k, Cin, Cout); torch's `weight_orig` (Cout, Cin, k) reshaped to (Cout, Cin * k) is
  the matrix whose top singular value divides it. `u` (Cout,) and `v` (Cin * k,) are the power
  iteration's vectors (state). Padding k // 2, circular, as the official heads.
  """

  def __init__(self, cin: int, cout: int, k: int, *, rngs: KeyGen):
    fan_in = cin * k
    self.k = k
    self.weight = param(rngs, layers.torch_default_uniform(fan_in), (k, cin, cout),
                        (None, None, None))
    self.bias = param(rngs, layers.torch_default_uniform(fan_in), (cout,), (None,))
    self.u = nnx.BatchStat(_normalise(jax.random.normal(rngs.params(), (cout,))),
                           out_sharding=(None,), eager_sharding=False)
    self.v = nnx.BatchStat(_normalise(jax.random.normal(rngs.params(), (fan_in,))),
                           out_sharding=(None,), eager_sharding=False)

  def matrix(self) -> jax.Array:
    """(Cout, Cin * k) in torch's flattening order (input channel major, tap minor)."""
    w = self.weight[...].astype(jnp.float32)                               # (k, Cin, Cout)
    return jnp.transpose(w, (2, 1, 0)).reshape(w.shape[2], -1)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mat = self.matrix()
    u, v = self.u[...], self.v[...]
    if train:
      hi = jax.lax.Precision.HIGHEST
      mat_const = jax.lax.stop_gradient(mat)
      v = _normalise(jnp.dot(mat_const.T, u, precision=hi))
      u = _normalise(jnp.dot(mat_const, v, precision=hi))
      self.u[...], self.v[...] = u, v
    sigma = jnp.dot(u, jnp.dot(mat, v, precision=jax.lax.Precision.HIGHEST))
    w = self.weight[...].astype(jnp.float32) / sigma                       # (k, Cin, Cout)
    pad, length = self.k // 2, x.shape[1]
    xp = jnp.concatenate([x[:, -pad:], x, x[:, :pad]], axis=1) if pad else x   # circular
    # The k taps as one dot over (tap, channel): (B, L, k, Cin) . (k, Cin, Cout).
    taps = jnp.stack([xp[:, t:t + length] for t in range(self.k)], axis=2).astype(jnp.float32)
    y = jnp.einsum("blkc,kco->blo", taps, w)
    return y + self.bias[...].astype(jnp.float32)


def check_batch(batch: int) -> str | None:
  """Why a batch does not fit BatchNormLocal's groups, or None."""
  groups = math.ceil(batch / VIRTUAL_BATCH)
  if batch % groups:
    return (f"batch {batch} does not split into {groups} equal groups of at most {VIRTUAL_BATCH} "
            "(the official view() fails there too)")
  return None


class BatchNormLocal(nnx.Module):
  """Normalisation over groups of consecutive samples (see the module docstring); (B, L, C)."""

  def __init__(self, channels: int, *, rngs: KeyGen, eps: float = LN_EPS):
    self.eps = eps
    self.scale = param(rngs, layers.ones, (channels,), ("norm",))
    self.bias = param(rngs, layers.zeros, (channels,), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    b = x.shape[0]
    problem = check_batch(b)
    if problem:
      raise ValueError(f"BatchNormLocal: {problem}")
    groups = math.ceil(b / VIRTUAL_BATCH)
    g = x.astype(jnp.float32).reshape(groups, b // groups, *x.shape[1:])    # (G, B/G, L, C)
    mean = g.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 2), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + self.eps)).reshape(x.shape)
    return y * self.scale[...] + self.bias[...]


class Head(nnx.Module):
  """One readout's scorer: (B, L, 384) -> (B, L) logits."""

  def __init__(self, *, rngs: KeyGen, kernel_size: int = 9):
    self.conv1 = SpectralConv1d(WIDTH, WIDTH, 1, rngs=rngs)
    self.norm1 = BatchNormLocal(WIDTH, rngs=rngs)
    self.conv2 = SpectralConv1d(WIDTH, WIDTH, kernel_size, rngs=rngs)
    self.norm2 = BatchNormLocal(WIDTH, rngs=rngs)
    self.out = SpectralConv1d(WIDTH, 1, 1, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = jax.nn.leaky_relu(self.norm1(self.conv1(x, train)), 0.2)
    r = jax.nn.leaky_relu(self.norm2(self.conv2(h, train)), 0.2)
    h = (r + h) * (1 / np.sqrt(2))
    return self.out(h, train)[..., 0]


class DinoDiscriminatorHeads(nnx.Module):
  """The trained part: five heads over the backbone's readouts -> (B, 5 * 196) logits."""

  def __init__(self, *, rngs, kernel_size: int = 9, depth: int = DEPTH):
    rngs = KeyGen(rngs)
    self.heads = nnx.List([Head(rngs=rngs, kernel_size=kernel_size)
                           for _ in range(len(key_depths(depth)) + 1)])

  def __call__(self, readouts: list[jax.Array], train: bool) -> jax.Array:
    b = readouts[0].shape[0]
    return jnp.concatenate([head(r, train).reshape(b, -1)
                            for head, r in zip(self.heads, readouts)], axis=1)
