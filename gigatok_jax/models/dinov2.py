"""DINOv2 ViT/14: the frozen semantic teacher of GigaTok's representation alignment.

Why our own module: GigaTok regularises its decoder features towards DINOv2-B/14 patch tokens
(cosine similarity). The teacher has to run inside the jitted, sharded train step in the
tokenizer's compute dtype, so it is an nnx module whose parameters carry logical axis names like
the tokenizer's. Weights come from the public torch-hub or Hugging Face files through
`convert/dinov2.py`; semantics follow docs/checkpoint_layouts.md section 3:

  tokens = [cls + pos[0], registers (no pos-emb), patches + pos[1:]]   (patches row-major)
  each block (pre-norm, LayerNorm eps 1e-6, LayerScale):
      t += ls1 * Attn(norm1(t));  t += ls2 * MLP(norm2(t))     MLP: exact GELU, or SwiGLU for g/14
  outputs: norm(t) -> cls token, patch tokens (registers dropped)

The stored pos_embed covers a `pos_grid` x `pos_grid` patch grid (37 for the released files, or 16
after GigaTok's one-time resize for 224 px input). Other input grids resample it on the fly with one
of two documented bicubic variants (`pos_resize`):
  "timm": size=, antialias=True  (GigaTok's timm resample_abs_pos_embed; HF Dinov2WithRegisters)
  "hf":   size=, antialias=False, Keys A=-0.75 with clamped borders (HF Dinov2Model)
`teacher_input` reproduces GigaTok's preprocessing ([-1, 1] -> ImageNet normalisation -> torch
F.interpolate bicubic without antialias), which jax.image.resize (Keys A=-0.5) does not.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.models import layers

MODEL_NAME = "dinov2"       # the "model" entry of a converted file's metadata
PATCH = 14
LN_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POS_RESIZE_METHODS = ("timm", "hf")


class Variant(NamedTuple):
  width: int
  depth: int
  heads: int
  swiglu: bool


# The released backbones (head_dim 64 throughout); "_reg4" files add 4 register tokens.
DINOV2_VARIANTS = {
    "vits14": Variant(384, 12, 6, False),
    "vitb14": Variant(768, 12, 12, False),
    "vitl14": Variant(1024, 24, 16, False),
    "vitg14": Variant(1536, 40, 24, True),
}


def mlp_hidden_for(width: int, swiglu: bool) -> int:
  """FFN width: 4W, or for SwiGLU two thirds of it rounded up to a multiple of 8 (g: 4096)."""
  hidden = 4 * width
  return (int(hidden * 2 / 3) + 7) // 8 * 8 if swiglu else hidden


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
  """Everything that shapes the module; JSON-able (stored in converted files' metadata)."""
  variant: str = "vitb14"     # a DINOV2_VARIANTS name, or "custom" (tests)
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_hidden: int = 3072
  swiglu: bool = False
  num_registers: int = 0
  pos_grid: int = 37          # stored pos_embed covers pos_grid x pos_grid patches (+1 cls)
  pos_resize: str = "timm"    # how pos_embed is resampled for another input grid

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"DinoV2Config: width {self.width} not divisible by {self.heads} heads")
    if self.pos_resize not in POS_RESIZE_METHODS:
      raise ValueError(f"DinoV2Config: pos_resize must be one of {POS_RESIZE_METHODS}, "
                       f"got {self.pos_resize!r}")
    if min(self.depth, self.pos_grid, self.mlp_hidden) < 1 or self.num_registers < 0:
      raise ValueError(f"DinoV2Config: bad sizes {self}")

  @classmethod
  def from_variant(cls, name: str, *, registers: int | None = None, pos_grid: int = 37,
                   depth: int | None = None, pos_resize: str = "timm") -> "DinoV2Config":
    """E.g. "vitb14", "vitb14_reg4" or the hub name "dinov2_vitb14_reg4"; `depth` overrides."""
    base = name.removeprefix("dinov2_")
    regs = 0
    if base.endswith("_reg4"):
      base, regs = base[:-len("_reg4")], 4
    if base not in DINOV2_VARIANTS:
      raise ValueError(f"unknown DINOv2 variant {name!r}; known: {sorted(DINOV2_VARIANTS)} "
                       "(optionally with a _reg4 suffix)")
    v = DINOV2_VARIANTS[base]
    return cls(variant=base, width=v.width, depth=v.depth if depth is None else depth,
               heads=v.heads, mlp_hidden=mlp_hidden_for(v.width, v.swiglu), swiglu=v.swiglu,
               num_registers=regs if registers is None else registers, pos_grid=pos_grid,
               pos_resize=pos_resize)

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)


class DinoV2Output(NamedTuple):
  cls: jax.Array                          # (B, D) after the final norm
  patch_tokens: jax.Array                 # (B, N, D) after the final norm, registers excluded
  intermediates: tuple[jax.Array, ...]    # last n blocks' patch tokens, each (B, N, D), normed


# ------------------------------------------------------------------------------------------------
# resampling (pos-embed grids, teacher input)
# ------------------------------------------------------------------------------------------------
def _keys_cubic(t: np.ndarray, a: float) -> np.ndarray:
  t = np.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def torch_bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic interpolate (size=, align_corners=False, no
  antialias) along one axis: 4 taps at half-pixel source positions, indices clamped at borders
  (so edge taps accumulate), no widening of the kernel when downsampling.

  Source positions and weights are computed in float32 in torch's order: torch's rounding of
  scale * (i + 0.5) - 0.5 moves single weights by up to 2e-5 (256->224), which exact arithmetic
  would turn into 1e-4 differences on a normalised image.
  """
  f = np.float32
  src = f(n_in) / f(n_out) * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5)
  i0 = np.floor(src).astype(np.int64)
  t = (src - i0.astype(f)).astype(f)
  one, a = f(1), f(a)
  weights = (_keys_cubic(t + one, a), _keys_cubic(t, a), _keys_cubic(one - t, a),
             _keys_cubic(one - t + one, a))
  m = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  for k, w in zip(range(-1, 3), weights):
    np.add.at(m, (rows, np.clip(i0 + k, 0, n_in - 1)), w.astype(np.float64))
  return m


def torch_bicubic_resize(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """(..., H, W, C) -> (..., h, w, C) in float32, as torch F.interpolate(mode='bicubic',
  align_corners=False, antialias=False) on the NCHW transpose (separable, so two matmuls)."""
  h_in, w_in = x.shape[-3], x.shape[-2]
  mh = jnp.asarray(torch_bicubic_matrix(h_in, out_hw[0]), jnp.float32)   # (h, H)
  mw = jnp.asarray(torch_bicubic_matrix(w_in, out_hw[1]), jnp.float32)   # (w, W)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("hH,...HWc->...hWc", mh, x.astype(jnp.float32), precision=hi)
  return jnp.einsum("wW,...hWc->...hwc", mw, x, precision=hi)


def resize_grid(x: jax.Array, out_hw: tuple[int, int], method: str) -> jax.Array:
  """Resamples a (H, W, C) grid (a pos-embed) to out_hw in float32 with a documented method."""
  if tuple(x.shape[:2]) == tuple(out_hw):
    return x.astype(jnp.float32)
  if method == "timm":   # torch antialias=True == jax's: Keys A=-0.5, widened, renormalised
    return jax.image.resize(x.astype(jnp.float32), (*out_hw, x.shape[-1]), "bicubic",
                            antialias=True)
  if method == "hf":
    return torch_bicubic_resize(x, out_hw)
  raise ValueError(f"pos_resize must be one of {POS_RESIZE_METHODS}, got {method!r}")


def resize_pos_embed(pos: jax.Array, grid: tuple[int, int], method: str) -> jax.Array:
  """(1 + G*G, D) -> (1 + gh*gw, D) float32; the cls entry is kept as is."""
  g = math.isqrt(pos.shape[0] - 1)
  if g * g != pos.shape[0] - 1:
    raise ValueError(f"pos_embed of {pos.shape[0]} tokens is not 1 + a square grid")
  patch = resize_grid(pos[1:].reshape(g, g, -1), grid, method)             # (gh, gw, D)
  return jnp.concatenate([pos[:1].astype(jnp.float32), patch.reshape(-1, pos.shape[-1])], axis=0)


def teacher_input(images: jax.Array, size: int = 224) -> jax.Array:
  """GigaTok's DINOv2 preprocessing: (B, H, W, 3) in [-1, 1] -> (B, size, size, 3) float32,
  ImageNet-normalised, resized like torch F.interpolate(size, mode='bicubic') (no antialias)."""
  x = (images.astype(jnp.float32) + 1.0) / 2.0
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  if x.shape[1:3] != (size, size):
    x = torch_bicubic_resize(x, (size, size))
  return x


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x)); the hub's fused w12 is [gate; up] along its output rows."""

  def __init__(self, width: int, hidden: int, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate = layers.Dense(width, hidden, axes=("embed", "mlp"), **kw)
    self.up = layers.Dense(width, hidden, axes=("embed", "mlp"), **kw)
    self.down = layers.Dense(hidden, width, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """Pre-norm ViT block with LayerScale (DINOv2 `NestedTensorBlock` at inference)."""

  def __init__(self, config: DinoV2Config, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    w = config.width
    self.dtype = dtype
    self.norm1 = layers.LayerNorm(w, eps=LN_EPS, **kw)
    self.attn = layers.Attention(w, config.heads, **kw)
    self.ls1 = layers.param(rngs, nnx.initializers.constant(1e-5), (w,), ("norm",), param_dtype)
    self.norm2 = layers.LayerNorm(w, eps=LN_EPS, **kw)
    self.mlp = (SwiGLU(w, config.mlp_hidden, **kw) if config.swiglu
                else layers.Mlp(w, config.mlp_hidden, **kw))   # exact GELU
    self.ls2 = layers.param(rngs, nnx.initializers.constant(1e-5), (w,), ("norm",), param_dtype)

  def __call__(self, t: jax.Array) -> jax.Array:   # (B, T, D) -> (B, T, D)
    dt = self.dtype
    h = self.norm1(t)
    t = t + self.ls1[...].astype(dt) * self.attn(h, h, h)
    return t + self.ls2[...].astype(dt) * self.mlp(self.norm2(t))


class DinoV2(nnx.Module):
  """DINOv2 ViT/14 backbone on NHWC ImageNet-normalised images (H, W multiples of 14)."""

  def __init__(self, config: DinoV2Config, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    self.config = config
    self.dtype = dtype
    keys = layers.KeyGen(rngs)
    w = config.width
    kw = dict(rngs=keys, dtype=dtype, param_dtype=param_dtype)
    self.patch_embed = layers.Conv(3, w, PATCH, stride=PATCH, padding="VALID", **kw)
    init = layers.trunc_normal_02
    self.cls_token = layers.param(keys, init, (1, w), (None, "embed"), param_dtype)
    self.register_tokens = (layers.param(keys, init, (config.num_registers, w), (None, "embed"),
                                         param_dtype) if config.num_registers else None)
    self.pos_embed = layers.param(keys, init, (1 + config.pos_grid ** 2, w), ("position", "embed"),
                                  param_dtype)
    self.blocks = nnx.List([Block(config, **kw) for _ in range(config.depth)])
    self.norm = layers.LayerNorm(w, eps=LN_EPS, **kw)

  def __call__(self, x: jax.Array, *, n_intermediate: int = 0) -> DinoV2Output:
    """x (B, H, W, 3) -> normed cls (B, D), patch tokens (B, N, D), N = (H/14) * (W/14) row-major.

    `intermediates` holds the patch tokens of the last `n_intermediate` blocks, each passed through
    the final norm (the hub's get_intermediate_layers(n, norm=True)); its last entry is
    `patch_tokens`.
    """
    b, h, w, c = x.shape
    cfg = self.config
    if h % PATCH or w % PATCH or c != 3:
      raise ValueError(f"DinoV2 expects (B, H, W, 3) with H, W multiples of {PATCH}, got {x.shape}")
    if not 0 <= n_intermediate <= cfg.depth:
      raise ValueError(f"n_intermediate must be in [0, {cfg.depth}], got {n_intermediate}")
    dt = self.dtype
    gh, gw = h // PATCH, w // PATCH
    d = cfg.width

    patches = self.patch_embed(x).reshape(b, gh * gw, d)                     # (B, N, D) row-major
    pos = self.pos_embed[...]
    if (gh, gw) != (cfg.pos_grid, cfg.pos_grid):
      pos = resize_pos_embed(pos, (gh, gw), cfg.pos_resize)                  # (1 + N, D) f32
    pos = pos.astype(dt)
    cls = jnp.broadcast_to((self.cls_token[...].astype(dt) + pos[:1])[None], (b, 1, d))
    parts = [cls]
    if self.register_tokens is not None:                                     # no pos-emb
      parts.append(jnp.broadcast_to(self.register_tokens[...].astype(dt)[None],
                                    (b, cfg.num_registers, d)))
    parts.append(patches + pos[1:][None])
    t = jnp.concatenate(parts, axis=1)                                       # (B, 1 + R + N, D)

    first = 1 + cfg.num_registers
    kept = []
    for i, block in enumerate(self.blocks):
      t = block(t)
      if cfg.depth - n_intermediate <= i < cfg.depth - 1:
        kept.append(self.norm(t)[:, first:])                                 # (B, N, D)
    t = self.norm(t)
    patch_tokens = t[:, first:]
    intermediates = tuple(kept) + ((patch_tokens,) if n_intermediate else ())
    return DinoV2Output(cls=t[:, 0], patch_tokens=patch_tokens, intermediates=intermediates)


def num_params(module: nnx.Module) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))
