"""Shared building blocks: dense, conv, norms, attention, MLP.

Every parameter is created through `param()` with logical axis names (see `parallel.py` for how
names map to mesh axes). Parameters are stored in `param_dtype` (float32 master weights); each layer
casts them to the compute `dtype` at use. Norm statistics are always computed in float32.

Layouts: images are NHWC, token sequences (B, T, C). Conv kernels are HWIO, Dense kernels (in, out),
attention projections (embed, heads, head_dim), so converting a PyTorch Linear is `W.T` and a
fused `in_proj` reshapes without permuting (see docs/checkpoint_layouts.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gigatok_jax.models.group_norm import group_norm

Initializer = Callable[..., jax.Array]

# Torch-default-like inits used by the reference model.
trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02)
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def torch_default_uniform(fan_in: int) -> Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Linear/Conv init (weights and biases)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class KeyGen:
  """Deterministic per-parameter keys: fold_in(base, n) for the n-th parameter created.

  Used instead of drawing from `nnx.Rngs` for every parameter: each `nnx.Rngs` draw updates a
  Variable inside the trace, which made `nnx.eval_shape` of the 2.9B model take minutes.
  """

  def __init__(self, rngs: "nnx.Rngs | KeyGen | jax.Array | int"):
    if isinstance(rngs, KeyGen):
      self.base = rngs.base
    elif isinstance(rngs, nnx.Rngs):
      self.base = rngs.params()
    elif isinstance(rngs, int):
      self.base = jax.random.key(rngs)
    else:
      self.base = rngs
    self.count = 0

  def params(self) -> jax.Array:
    self.count += 1
    return jax.random.fold_in(self.base, self.count)


def param(rngs: KeyGen, init: Initializer, shape: Sequence[int], axes: Sequence[str | None],
          dtype=jnp.float32) -> nnx.Param:
  """Creates an `nnx.Param` carrying logical axis names (one per dimension)."""
  assert len(axes) == len(shape), (axes, shape)
  # eager_sharding=False: modules build anywhere (no mesh needed); the trainer places parameters
  # with jit out_shardings derived from these names (parallel.state_shardings).
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes),
                   eager_sharding=False)


def flat_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(..., in) @ (in, out) -> (..., out) as one 2D matmul over the flattened leading dims.

  The same products as `jnp.dot(x, kernel)`, but XLA:CPU then plans the backward pass without the
  transposed copies it inserts for a (B, T, in) operand: a GPT-B SwiGLU at batch 4 x 256 tokens
  took 216 ms forward + backward with 3D operands and 165 ms with 2D ones."""
  lead = x.shape[:-1]
  return jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*lead, kernel.shape[-1])


class Dense(nnx.Module):
  """y = x @ kernel + bias, kernel (in, out)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               axes: tuple[str | None, str | None] = ("embed", "mlp"), use_bias: bool = True,
               kernel_init: Initializer = trunc_normal_02, bias_init: Initializer = zeros,
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init, (in_features, out_features), axes, param_dtype)
    self.bias = (param(rngs, bias_init, (out_features,), (axes[1],), param_dtype)
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:  # (..., in) -> (..., out)
    y = flat_matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Conv(nnx.Module):
  """2D convolution on NHWC input with an HWIO kernel.

  `padding` is 'SAME', 'VALID', an int (symmetric) or ((top, bottom), (left, right)).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs,
               stride: int = 1, padding="SAME", use_bias: bool = True,
               kernel_init: Initializer = trunc_normal_02, bias_init: Initializer = zeros,
               axes: tuple[str | None, str | None] = ("conv_in", "conv_out"),
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.dtype = dtype
    self.stride = stride
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    self.padding = padding
    self.kernel = param(rngs, kernel_init, (kernel_size, kernel_size, in_channels, out_channels),
                        (None, None) + tuple(axes), param_dtype)
    self.bias = param(rngs, bias_init, (out_channels,), (axes[1],), param_dtype) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, Cin) -> (B, H', W', Cout)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, statistics in float32 (torch default eps 1e-5)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.scale = param(rngs, ones, (dim,), ("norm",), param_dtype)
    self.bias = param(rngs, zeros, (dim,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) * scale over the last axis, in float32 (LLaMA; weight only)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.scale = param(rngs, ones, (dim,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class GroupNorm(nnx.Module):
  """GroupNorm (32 groups, eps 1e-6 as in the VQGAN CNNs), optional affine, optional fused swish.

  Runs the fused op of `group_norm.py` (per-channel reductions, hand-written backward).
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs, num_groups: int = 32, eps: float = 1e-6,
               affine: bool = True, dtype=jnp.float32, param_dtype=jnp.float32):
    if channels % num_groups:
      raise ValueError(f"GroupNorm: {channels} channels not divisible by {num_groups} groups")
    self.num_groups = num_groups
    self.eps = eps
    self.dtype = dtype
    self.scale = param(rngs, ones, (channels,), ("norm",), param_dtype) if affine else None
    self.bias = param(rngs, zeros, (channels,), ("norm",), param_dtype) if affine else None

  def __call__(self, x: jax.Array, *, swish: bool = False) -> jax.Array:
    """x (B, H, W, C) -> same shape in the compute dtype; `swish=True` applies x * sigmoid(x)."""
    b, c = x.shape[0], x.shape[-1]
    if self.scale is not None:
      scale = jnp.broadcast_to(self.scale[...].astype(jnp.float32), (b, c))
      shift = jnp.broadcast_to(self.bias[...].astype(jnp.float32), (b, c))
    else:
      scale, shift = jnp.ones((b, c), jnp.float32), jnp.zeros((b, c), jnp.float32)
    return group_norm(x.astype(self.dtype), scale, shift, self.num_groups, self.eps, swish)


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v inputs (torch `nn.MultiheadAttention` semantics).

  Projections have biases; heads are contiguous blocks of head_dim features; scale 1/sqrt(head_dim).
  """

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, kv_width: int | None = None,
               dtype=jnp.float32, param_dtype=jnp.float32):
    if width % num_heads:
      raise ValueError(f"Attention: width {width} not divisible by {num_heads} heads")
    kv_width = kv_width or width
    head_dim = width // num_heads
    self.dtype = dtype
    # torch keeps xavier-uniform on the fused (3W, W) in_proj: bound sqrt(6 / (W + 3W)); biases 0.
    # variance_scaling's fan_avg here is W, so scale 0.5 gives that bound.
    xavier = nnx.initializers.variance_scaling(0.5, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
    qkv_axes = ("embed", "heads", "head_dim")
    self.query = param(rngs, xavier, (width, num_heads, head_dim), qkv_axes, param_dtype)
    self.key = param(rngs, xavier, (kv_width, num_heads, head_dim), qkv_axes, param_dtype)
    self.value = param(rngs, xavier, (kv_width, num_heads, head_dim), qkv_axes, param_dtype)
    self.query_bias = param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"), param_dtype)
    self.key_bias = param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"), param_dtype)
    self.value_bias = param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"), param_dtype)
    self.out = param(rngs, trunc_normal_02, (num_heads, head_dim, width),
                     ("heads", "head_dim", "embed"), param_dtype)
    self.out_bias = param(rngs, zeros, (width,), ("embed",), param_dtype)

  def __call__(self, q_in: jax.Array, k_in: jax.Array, v_in: jax.Array) -> jax.Array:
    # q_in (B, Tq, W); k_in, v_in (B, Tk, Wkv) -> (B, Tq, W)
    dt = self.dtype
    q = jnp.einsum("btw,whd->bthd", q_in.astype(dt), self.query[...].astype(dt)) + self.query_bias[...].astype(dt)
    k = jnp.einsum("btw,whd->bthd", k_in.astype(dt), self.key[...].astype(dt)) + self.key_bias[...].astype(dt)
    v = jnp.einsum("btw,whd->bthd", v_in.astype(dt), self.value[...].astype(dt)) + self.value_bias[...].astype(dt)
    o = jax.nn.dot_product_attention(q, k, v)  # (B, Tq, H, D)
    return jnp.einsum("bthd,hdw->btw", o, self.out[...].astype(dt)) + self.out_bias[...].astype(dt)


class Mlp(nnx.Module):
  """Linear -> activation -> Linear (transformer FFN, exact GELU by default)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, out_width: int | None = None,
               activation: Callable[[jax.Array], jax.Array] = lambda x: jax.nn.gelu(x, approximate=False),
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.activation = activation
    self.fc1 = Dense(width, hidden, rngs=rngs, axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype)
    self.fc2 = Dense(hidden, out_width or width, rngs=rngs, axes=("mlp", "embed"), dtype=dtype,
                     param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(self.activation(self.fc1(x)))


class SwiGLU(nnx.Module):
  """w2(silu(w1 x) * w3 x), no biases (LLaMA FFN)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, kernel_init: Initializer = trunc_normal_02):
    kw = dict(rngs=rngs, use_bias=False, dtype=dtype, param_dtype=param_dtype,
              kernel_init=kernel_init)
    self.w1 = Dense(width, hidden, axes=("embed", "mlp"), **kw)
    self.w3 = Dense(width, hidden, axes=("embed", "mlp"), **kw)
    self.w2 = Dense(hidden, width, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:  # (..., W) -> (..., W)
    return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when `key` is None (inference) or rate is 0."""
  if key is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# Rematerialisation policies of `model.remat` (applied per transformer layer and per CNN res block):
# "none" keeps every activation for the backward pass, "full" keeps only the block inputs and
# recomputes the rest, "save_dots" keeps matmul outputs and recomputes the cheap elementwise work.
REMAT_POLICIES = ("none", "full", "save_dots")


def _saveable(policy: str):
  """The jax.checkpoint policy of a `model.remat` name ("none" has none: nothing is rematerialised)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of {REMAT_POLICIES}")
  return None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def remat_call(policy: str, fn: Callable, *args):
  """fn(*args) under a rematerialisation policy; `fn`'s arguments may be nnx Modules.

  Every block of every model runs through here (or through `run_layers`), so this is also where
  block outputs get their activation sharding constraint (see `block_output_sharding`).
  """
  if policy == "none":
    out = fn(*args)
  else:
    out = nnx.remat(fn, policy=_saveable(policy))(*args)
  if isinstance(out, tuple):
    return (constrain_block_output(out[0]),) + out[1:]
  return constrain_block_output(out)


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
  """One module of the same structure whose parameters are those of `modules` stacked on a new
  leading axis with the logical name 'layers': how `model.scan_layers` stores a layer stack."""
  graphdef, _ = nnx.split(modules[0])

  def stack(*variables):
    names = variables[0].get_metadata().get("out_sharding") or (None,) * variables[0].ndim
    return variables[0].replace(jnp.stack([v[...] for v in variables]),
                                out_sharding=("layers",) + tuple(names))
  states = [nnx.split(m)[1] for m in modules]
  return nnx.merge(graphdef, jax.tree.map(stack, *states,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable)))


def run_layers(layers, fn: Callable, x: jax.Array, *, remat: str = "none", scan: bool = False,
               tap_depth: int = 0, per_layer: tuple = ()):
  """x <- fn(layer, x, *per_layer[i]) for each layer i in order -> (x, x after layer `tap_depth`).

  `layers`: a sequence of modules (run unrolled, or with `scan=True` stacked inside the step and
  scanned), or one module from `stack_modules` (always scanned: the layers of a stack stored with
  `model.scan_layers`). `per_layer`: arrays with a leading axis of the depth (e.g. dropout keys).
  The tap is None when `tap_depth` is 0.

  Scanning compiles one layer body instead of the unrolled depth; with stacked storage the
  optimizer also sees one array per parameter of the stack instead of one per layer, which is
  what keeps the TPU compile of the 2.9B recipe (48 + 36 layers) within a workstation's memory.
  """
  if isinstance(layers, (list, tuple, nnx.List)):
    layers = list(layers)
    if not scan:
      tapped = None
      for i, layer in enumerate(layers):
        x = remat_call(remat, fn, layer, x, *(a[i] for a in per_layer))
        if i + 1 == tap_depth:
          tapped = x
      return x, tapped
    layers = stack_modules(layers)
  graphdef, state = nnx.split(layers)
  depth = jax.tree.leaves(state)[0].shape[0]

  def body(h, xs):
    layer_state, extra = xs
    return constrain_block_output(fn(nnx.merge(graphdef, layer_state), h, *extra)), None

  if remat != "none":
    # prevent_cse=False: inside a scan the loop already keeps XLA from merging the recomputation.
    body = jax.checkpoint(body, policy=_saveable(remat), prevent_cse=False)
  # A tap inside the stack splits it into two scans (slices of the stacked parameters); carrying
  # the tapped activation through one scan instead would save it at every layer for the backward.
  cuts = sorted({0, depth} | ({tap_depth} if 0 < tap_depth < depth else set()))
  tapped = None
  for a, b in zip(cuts[:-1], cuts[1:]):
    part = jax.tree.map(lambda v: v[a:b], (state, per_layer))
    x, _ = jax.lax.scan(body, x, part)
    if b == tap_depth:
      tapped = x
  return x, tapped


# Mesh axes of the batch dimension for block outputs while a train step is traced (None = off).
# Set by the trainers (which know the mesh and rules); models only read it, so they stay free of
# mesh code. Pinning block outputs to "batch-sharded, everything else replicated" keeps XLA's
# sharding propagation from drifting (e.g. into fsdp-sharded feature dims) between blocks.
_BLOCK_OUTPUT_BATCH_AXES: contextvars.ContextVar = contextvars.ContextVar(
    "gigatok_block_output_batch_axes", default=None)


@contextlib.contextmanager
def block_output_sharding(batch_axes):
  """Within this context (around tracing), block outputs are constrained to P(batch_axes, None...)."""
  token = _BLOCK_OUTPUT_BATCH_AXES.set(batch_axes)
  try:
    yield
  finally:
    _BLOCK_OUTPUT_BATCH_AXES.reset(token)


def constrain_block_output(x):
  axes = _BLOCK_OUTPUT_BATCH_AXES.get()
  if axes is None or not hasattr(x, "ndim") or x.ndim == 0:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes, *([None] * (x.ndim - 1))))


def swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)
