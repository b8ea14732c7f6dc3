"""Converts public DINOv2 ViT/14 weights (torch hub or Hugging Face) into a gigatok_jax file.

Why one converter for several layouts: the facebookresearch hub files (`dinov2_vitb14_pretrain.pth`)
are what GigaTok loads, but only the Hugging Face repos ship safetensors, and HF renamed its modules
between transformers 4.x (the names on disk) and 5.x (the names in memory). The layout is detected
from the key names, every layout is first renamed to the hub names, then mapped onto ours (see
docs/checkpoint_layouts.md 3.1 / 3.2). `L.` is `encoder.layer.{i}.`, `B.` is
`blocks.{i}.`:

  hub                      HF 4.x on disk / HF 5.x in memory          ours
  cls_token (1,1,D)        embeddings.cls_token                       cls_token (1,D)
  register_tokens (1,R,D)  embeddings.register_tokens                 register_tokens (R,D)
  pos_embed (1,1+G*G,D)    embeddings.position_embeddings             pos_embed (1+G*G,D)
  patch_embed.proj         embeddings.patch_embeddings.projection     patch_embed (HWIO kernel)
  B.norm1/2                L.norm1/2                                  B.norm1/2 (scale, bias)
  B.attn.qkv (rows q|k|v)  L.attention.attention.{query,key,value}    B.attn.{query,key,value}
                           / L.attention.{q,k,v}_proj                 (D, heads, head_dim), biases
  B.attn.proj              L.attention.output.dense / L.attention.o_proj   B.attn.out(_bias)
  B.ls1/2.gamma            L.layer_scale1/2.lambda1                   B.ls1/2
  B.mlp.fc1/fc2            L.mlp.fc1/fc2                              B.mlp.fc1/fc2
  B.mlp.w12 (rows gate|up) L.mlp.weights_in / L.mlp.{gate,up}_proj    B.mlp.{gate,up}
  B.mlp.w3                 L.mlp.weights_out / L.mlp.down_proj        B.mlp.down
  norm                     layernorm                                  norm

Strict: every source tensor is used exactly once; `mask_token` (unused at inference) is dropped on
purpose. Anything else left over, missing or mis-shaped is one CheckpointError naming all of them.

  python -m gigatok_jax.convert.dinov2 --src=dinov2_vitb14_pretrain.pth \
      --out=dinov2_vitb14.safetensors [--variant=vitb14] [--pos_grid=16]

`--pos_grid=16` resizes the stored 37x37 pos_embed once (timm method: bicubic, antialias), as
GigaTok does after loading, so 224 px input needs no resampling inside the train step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError, UserError
from gigatok_jax.models.dinov2 import (DINOV2_VARIANTS, MODEL_NAME, PATCH, DinoV2, DinoV2Config,
                                       mlp_hidden_for, resize_pos_embed)

IGNORED = ("mask_token",)                  # canonical (hub) names dropped on purpose
# Wrappers whose prefix is stripped when every key carries it (DDP, HF task models' base model).
PREFIXES = ("module.", "dinov2.", "dinov2_with_registers.", "backbone.")

# HF -> hub block-suffix renames (4.x on-disk and 5.x in-memory names). q/k/v and gate/up are
# recorded under the hub's fused names with a part index, fused back below.
_HF_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "attention.output.dense.weight": "attn.proj.weight",              # 4.x
    "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight",                    # 5.x
    "attention.o_proj.bias": "attn.proj.bias",
    "mlp.weights_in.weight": "mlp.w12.weight", "mlp.weights_in.bias": "mlp.w12.bias",      # 4.x
    "mlp.weights_out.weight": "mlp.w3.weight", "mlp.weights_out.bias": "mlp.w3.bias",
    "mlp.down_proj.weight": "mlp.w3.weight", "mlp.down_proj.bias": "mlp.w3.bias",          # 5.x
}
_HF_PARTS = {  # suffix -> (fused hub name without .weight/.bias, part index, number of parts)
    "attention.attention.query": ("attn.qkv", 0, 3), "attention.attention.key": ("attn.qkv", 1, 3),
    "attention.attention.value": ("attn.qkv", 2, 3),
    "attention.q_proj": ("attn.qkv", 0, 3), "attention.k_proj": ("attn.qkv", 1, 3),
    "attention.v_proj": ("attn.qkv", 2, 3),
    "mlp.gate_proj": ("mlp.w12", 0, 2), "mlp.up_proj": ("mlp.w12", 1, 2),
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}


def _strip_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  for p in PREFIXES:
    if sd and all(k.startswith(p) for k in sd):
      return {k[len(p):]: v for k, v in sd.items()}
  return dict(sd)


def detect_layout(sd: Mapping[str, np.ndarray]) -> str:
  """'hub' or 'hf' from the key names; a mix of both or neither is a CheckpointError."""
  hf = any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd)
  hub = any(k.startswith(("blocks.", "patch_embed.")) or k in ("cls_token", "pos_embed")
            for k in sd)
  if hf == hub:
    sample = sorted(sd)[:8]
    raise CheckpointError(f"not a DINOv2 state dict in the torch-hub or Hugging Face layout "
                          f"({'both' if hf else 'neither'} found; first keys {sample})")
  return "hf" if hf else "hub"


def to_hub_names(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Any supported layout -> the torch-hub names (HF q/k/v and gate/up fused back along rows).

  Each source key is renamed once; two source keys landing on one name (e.g. 4.x and 5.x names of
  the same tensor) or a missing part of a fused tensor is a CheckpointError. Unknown keys keep their
  name, so the strict check below reports them.
  """
  sd = _strip_prefix(sd)
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  parts: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
  nparts: dict[str, int] = {}
  clashes = []

  def put(name, src, value):
    if name in out:
      clashes.append(f"{origin[name]} and {src} (both map to {name})")
    out[name], origin[name] = value, src

  if detect_layout(sd) == "hub":
    for k, v in sd.items():
      m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.*)", k)   # block_chunks>0: blocks.{chunk}.{i}.*
      put(f"blocks.{m.group(2)}.{m.group(3)}" if m else k, k, v)
  else:
    for k, v in sd.items():
      m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.*)\.(weight|bias)", k) or \
          re.fullmatch(r"encoder\.layer\.(\d+)\.(.*)()", k)
      if k in _HF_TOP:
        put(_HF_TOP[k], k, v)
      elif m and m.group(2) in _HF_PARTS:
        fused, idx, n = _HF_PARTS[m.group(2)]
        name = f"blocks.{m.group(1)}.{fused}.{m.group(3)}"
        slot = parts.setdefault(name, {})
        if idx in slot:
          clashes.append(f"{slot[idx][0]} and {k} (both are part {idx} of {name})")
        slot[idx] = (k, v)
        nparts[name] = n
      elif m and (suffix := k.split(".", 3)[3]) in _HF_BLOCK:
        put(f"blocks.{m.group(1)}.{_HF_BLOCK[suffix]}", k, v)
      else:
        put(k, k, v)
    for name, slot in parts.items():
      if sorted(slot) != list(range(nparts[name])):
        have = [slot[i][0] for i in sorted(slot)]
        clashes.append(f"{name} needs {nparts[name]} parts, found only {have}")
        continue
      arrays = [slot[i][1] for i in range(nparts[name])]
      if len({a.shape for a in arrays}) != 1:
        clashes.append(f"parts of {name} differ in shape: "
                       + ", ".join(f"{slot[i][0]} {slot[i][1].shape}" for i in sorted(slot)))
        continue
      put(name, "+".join(slot[i][0] for i in sorted(slot)), np.concatenate(arrays, axis=0))
  if clashes:
    raise CheckpointError("DINOv2 state dict has conflicting entries: " + "; ".join(clashes))
  return out


def _block_indices(hub: Mapping[str, np.ndarray]) -> list[int]:
  return sorted({int(m.group(1)) for k in hub if (m := re.match(r"blocks\.(\d+)\.", k))})


def infer_config(sd: Mapping[str, np.ndarray], *, heads: int | None = None,
                 pos_resize: str = "timm") -> DinoV2Config:
  """Variant, registers, SwiGLU, depth and pos grid from the tensor shapes (any layout).

  Heads are not visible in shapes: the released variants' counts are used (head_dim 64), or width
  // 64 for other widths unless `heads` is given.
  """
  hub = to_hub_names(sd)
  for k in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
    if k not in hub:
      raise CheckpointError(f"DINOv2 state dict lacks '{k}' (hub name); cannot infer its config")
  width = int(hub["cls_token"].shape[-1])
  blocks = _block_indices(hub)
  if not blocks or blocks != list(range(len(blocks))):
    raise CheckpointError(f"DINOv2 state dict: transformer blocks must be numbered 0..n-1, "
                          f"found {blocks[:50]}")
  n_pos = int(hub["pos_embed"].shape[1]) - 1
  grid = math.isqrt(n_pos)
  if grid * grid != n_pos:
    raise CheckpointError(f"DINOv2 pos_embed {hub['pos_embed'].shape}: {n_pos} patch positions "
                          "are not a square grid")
  swiglu = "blocks.0.mlp.w12.weight" in hub
  if swiglu:
    hidden = int(hub["blocks.0.mlp.w12.weight"].shape[0]) // 2
  elif "blocks.0.mlp.fc1.weight" in hub:
    hidden = int(hub["blocks.0.mlp.fc1.weight"].shape[0])
  else:
    raise CheckpointError("DINOv2 state dict: block 0 has neither mlp.fc1 nor a SwiGLU mlp")
  regs = int(hub["register_tokens"].shape[1]) if "register_tokens" in hub else 0
  variant = next((n for n, v in DINOV2_VARIANTS.items()
                  if (v.width, v.swiglu) == (width, swiglu)
                  and hidden == mlp_hidden_for(width, swiglu)), "custom")
  if heads is None:
    if variant != "custom":
      heads = DINOV2_VARIANTS[variant].heads
    elif width % 64 == 0:
      heads = width // 64
    else:
      raise CheckpointError(f"DINOv2 width {width} is no released variant; pass the head count")
  try:
    return DinoV2Config(variant=variant, width=width, depth=len(blocks), heads=heads,
                        mlp_hidden=hidden, swiglu=swiglu, num_registers=regs, pos_grid=grid,
                        pos_resize=pos_resize)
  except ValueError as e:
    raise CheckpointError(f"DINOv2 state dict: {e}") from e


def _linear(w: np.ndarray) -> np.ndarray:          # torch (out, in) -> (in, out)
  return np.ascontiguousarray(w.T)


def convert_state_dict(sd: Mapping[str, np.ndarray], config: DinoV2Config) -> dict[str, np.ndarray]:
  """Hub or HF (4.x / 5.x names) state dict -> our flat parameter names, strictly."""
  hub = to_hub_names(sd)
  d, h, hid, g = config.width, config.heads, config.mlp_hidden, config.pos_grid
  hd = d // h
  # hub name -> (its shape, prefix of our names, fn(array) -> {our name suffix: array})
  expected: dict[str, tuple[tuple[int, ...], str, Callable[[np.ndarray], dict]]] = {}

  def want(src, shape, fn, prefix=""):
    expected[prefix + src] = (tuple(shape), prefix, fn)

  want("cls_token", (1, 1, d), lambda a: {"cls_token": a.reshape(1, d)})
  want("pos_embed", (1, 1 + g * g, d), lambda a: {"pos_embed": a.reshape(1 + g * g, d)})
  if config.num_registers:
    r = config.num_registers
    want("register_tokens", (1, r, d), lambda a: {"register_tokens": a.reshape(r, d)})
  want("patch_embed.proj.weight", (d, 3, PATCH, PATCH),
       lambda a: {"patch_embed.kernel": a.transpose(2, 3, 1, 0)})       # OIHW -> HWIO
  want("patch_embed.proj.bias", (d,), lambda a: {"patch_embed.bias": a})
  qkv = ("query", "key", "value")                                       # rows q | k | v
  for i in range(config.depth):
    kw = dict(prefix=f"blocks.{i}.")                                    # same prefix on both sides
    for n in ("norm1", "norm2"):
      want(n + ".weight", (d,), lambda a, n=n: {n + ".scale": a}, **kw)
      want(n + ".bias", (d,), lambda a, n=n: {n + ".bias": a}, **kw)
    want("attn.qkv.weight", (3 * d, d), lambda a: {
        "attn." + n: _linear(a[j * d:(j + 1) * d]).reshape(d, h, hd) for j, n in enumerate(qkv)},
         **kw)
    want("attn.qkv.bias", (3 * d,), lambda a: {
        "attn." + n + "_bias": a[j * d:(j + 1) * d].reshape(h, hd) for j, n in enumerate(qkv)},
         **kw)
    want("attn.proj.weight", (d, d), lambda a: {"attn.out": _linear(a).reshape(h, hd, d)}, **kw)
    want("attn.proj.bias", (d,), lambda a: {"attn.out_bias": a}, **kw)
    want("ls1.gamma", (d,), lambda a: {"ls1": a}, **kw)
    want("ls2.gamma", (d,), lambda a: {"ls2": a}, **kw)
    if config.swiglu:                                                   # w12 rows: gate | up
      want("mlp.w12.weight", (2 * hid, d), lambda a: {
          "mlp.gate.kernel": _linear(a[:hid]), "mlp.up.kernel": _linear(a[hid:])}, **kw)
      want("mlp.w12.bias", (2 * hid,), lambda a: {
          "mlp.gate.bias": a[:hid], "mlp.up.bias": a[hid:]}, **kw)
      want("mlp.w3.weight", (d, hid), lambda a: {"mlp.down.kernel": _linear(a)}, **kw)
      want("mlp.w3.bias", (d,), lambda a: {"mlp.down.bias": a}, **kw)
    else:
      for n, shape in (("fc1", (hid, d)), ("fc2", (d, hid))):
        want(f"mlp.{n}.weight", shape, lambda a, n=n: {f"mlp.{n}.kernel": _linear(a)}, **kw)
        want(f"mlp.{n}.bias", shape[:1], lambda a, n=n: {f"mlp.{n}.bias": a}, **kw)
  want("norm.weight", (d,), lambda a: {"norm.scale": a})
  want("norm.bias", (d,), lambda a: {"norm.bias": a})

  problems = weight_files.fit_problems(
      {k: np.shape(v) for k, v in hub.items() if k not in IGNORED},
      {k: spec[0] for k, spec in expected.items()})
  if problems:
    raise CheckpointError(f"DINOv2 state dict does not fit {config.variant} (width {d}, depth "
                          f"{config.depth}, {config.num_registers} registers, swiglu "
                          f"{config.swiglu}; names in torch-hub form): " + " | ".join(problems))
  flat: dict[str, np.ndarray] = {}
  for src, (_, prefix, fn) in expected.items():
    for name, value in fn(np.asarray(hub[src], np.float32)).items():
      flat[prefix + name] = np.ascontiguousarray(value)
  return flat


def resize_flat_pos_embed(flat: dict[str, np.ndarray], config: DinoV2Config,
                          grid: int) -> tuple[dict[str, np.ndarray], DinoV2Config]:
  """Resizes the stored pos_embed once to grid x grid (timm method), as GigaTok does."""
  out = dict(flat)
  out["pos_embed"] = np.asarray(resize_pos_embed(jnp.asarray(flat["pos_embed"]), (grid, grid),
                                                 "timm"), np.float32)
  return out, dataclasses.replace(config, pos_grid=grid)


def check_fits_model(flat: Mapping[str, np.ndarray], config: DinoV2Config) -> None:
  """Names and shapes against DinoV2(config) built abstractly (nothing is allocated)."""
  model = nnx.eval_shape(lambda: DinoV2(config, rngs=nnx.Rngs(0)))
  shapes = {".".join(str(p) for p in path): tuple(v.shape)
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if shapes != got:
    diff = sorted(set(shapes.items()) ^ set(got.items()))
    raise CheckpointError(f"converted DINOv2 parameters do not fit the model: {diff[:20]}")


def model_from_flat(flat: Mapping[str, np.ndarray], config: DinoV2Config, *, dtype=jnp.float32,
                    param_dtype=jnp.float32, source: str = "converted DINOv2 weights") -> DinoV2:
  """DinoV2(config) holding `flat` (strict names and shapes, see weight_files.assign_flat).

  Built abstractly, then filled with zeros and the weights: no random init of up to 1.1B params.
  """
  abstract = nnx.eval_shape(lambda: DinoV2(config, rngs=nnx.Rngs(0), dtype=dtype,
                                           param_dtype=param_dtype))
  return weight_files.module_from_flat(abstract, flat, source)


def load_dinov2(path: str, dtype=jnp.float32, *, param_dtype=jnp.float32,
                pos_resize: str | None = None) -> DinoV2:
  """DinoV2 with the weights of a converted file; `pos_resize` overrides the stored method."""
  flat, meta = weight_files.load_flat(path, expect_model=MODEL_NAME)
  try:
    config = DinoV2Config(**json.loads(meta["config"]))
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: bad DINOv2 config in the metadata ({e})") from e
  if pos_resize is not None:
    config = dataclasses.replace(config, pos_resize=pos_resize)
  return model_from_flat(flat, config, dtype=dtype, param_dtype=param_dtype, source=path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert.dinov2",
      description="Convert DINOv2 ViT/14 weights (torch hub .pth or Hugging Face "
                  ".safetensors/.bin) into a gigatok_jax parameter file.")
  parser.add_argument("--src", required=True, help="source weights (.pth/.pt/.bin/.safetensors)")
  parser.add_argument("--out", required=True, help="output .safetensors file")
  parser.add_argument("--variant", default=None,
                      help=f"expected variant ({', '.join(DINOV2_VARIANTS)}, optionally _reg4); "
                           "checked against the shapes")
  parser.add_argument("--pos_grid", type=int, default=None,
                      help="resize the stored pos_embed once to this grid (timm method), e.g. 16 "
                           "for 224 px input")
  parser.add_argument("--heads", type=int, default=None, help="head count for a non-released width")
  args = parser.parse_args(argv)
  if args.pos_grid is not None and args.pos_grid < 1:
    parser.error(f"--pos_grid must be positive, got {args.pos_grid}")
  try:
    sd = weight_files.read_torch_state_dict(args.src)
    config = infer_config(sd, heads=args.heads)
    if args.variant is not None:
      try:
        want = DinoV2Config.from_variant(args.variant, depth=config.depth)
      except ValueError as e:
        raise CheckpointError(f"--variant: {e}") from e
      if (want.variant, want.width, want.num_registers, want.swiglu) != \
          (config.variant, config.width, config.num_registers, config.swiglu):
        raise CheckpointError(f"{args.src} holds {config.variant} (width {config.width}, "
                              f"{config.num_registers} registers), not {args.variant}")
      if config.depth != DINOV2_VARIANTS[want.variant].depth:
        raise CheckpointError(f"{args.src} has {config.depth} blocks, {args.variant} has "
                              f"{DINOV2_VARIANTS[want.variant].depth}")
    flat = convert_state_dict(sd, config)
    if args.pos_grid is not None and args.pos_grid != config.pos_grid:
      flat, config = resize_flat_pos_embed(flat, config, args.pos_grid)
    check_fits_model(flat, config)
    weight_files.save_flat(args.out, flat, metadata={"model": MODEL_NAME,
                                                     "config": config.to_json_dict()})
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(int(v.size) for v in flat.values())
  name = config.variant + (f"_reg{config.num_registers}" if config.num_registers else "")
  print(f"{MODEL_NAME} {name}: depth {config.depth}, pos grid {config.pos_grid}, {n:,} parameters "
        f"-> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
