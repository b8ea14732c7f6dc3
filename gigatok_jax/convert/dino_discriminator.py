"""Weights of the DINO discriminator: the frozen ViT-S/16 backbone and the trained heads.

Backbone: DINO's `dino_deitsmall16_pretrain.pth` (timm layout, the file the official
discriminator downloads) -> a converted file for `teachers.dino_disc_path`:

  python -m gigatok_jax.convert.dino_discriminator --src=dino_deitsmall16_pretrain.pth \
      --out=dino_vits16.safetensors

  cls_token (1, 1, 384), pos_embed (1, 197, 384)             -> same
  patch_embed.proj.weight (384, 3, 16, 16) / .bias           -> patch_embed.kernel (HWIO) / .bias
  blocks.i.norm{1,2}.weight / .bias                          -> blocks.i.norm{1,2}.scale / .bias
  blocks.i.attn.qkv.weight (1152, 384), rows q | k | v       -> attn.query / key / value (384, 6, 64)
  blocks.i.attn.qkv.bias (1152,)                             -> attn.*_bias (6, 64); the key bias is
                                                                zeroed, as the official loader does
  blocks.i.attn.proj.weight / .bias                          -> attn.out (6, 64, 384) / out_bias
  blocks.i.mlp.fc{1,2}.weight / .bias                        -> mlp.fc{1,2}.kernel (in, out) / .bias
  norm.weight / norm.bias                                    -> not used (the readouts skip it)

Heads: the `discriminator` entry of the released VQ_BL256_dino_disc.pt (`heads.{i}` of the official
DinoDisc; the backbone is not in it) -> our DinoDiscriminatorHeads parameters and spectral state:

  heads.i.0.0.*      -> heads.i.conv1     heads.i.0.1.{weight, bias} -> heads.i.norm1.{scale, bias}
  heads.i.1.fn.0.*   -> heads.i.conv2     heads.i.1.fn.1.*           -> heads.i.norm2
  heads.i.2.*        -> heads.i.out
  conv: weight_orig (out, in, k) -> weight (k, in, out); bias; weight_u -> u; weight_v -> v
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.convert import weight_files
from gigatok_jax.convert.dinov2 import _linear
from gigatok_jax.errors import CheckpointError, UserError
from gigatok_jax.models import dino_discriminator as dd
from gigatok_jax.tree_names import flat_shapes

D, H, HD = dd.WIDTH, dd.HEADS, dd.WIDTH // dd.HEADS
IGNORED = ("norm.weight", "norm.bias")


def backbone_from_torch(sd: Mapping[str, np.ndarray], source: str = "DINO ViT-S/16") -> dict:
  """timm-layout ViT-S/16 state dict -> our flat backbone parameters (strict)."""
  sd = {k[len("module."):] if k.startswith("module.") else k: np.asarray(v, np.float32)
        for k, v in sd.items() if k not in IGNORED}
  flat = {"cls_token": sd.pop("cls_token", None), "pos_embed": sd.pop("pos_embed", None)}
  w = sd.pop("patch_embed.proj.weight", None)
  flat["patch_embed.kernel"] = None if w is None else w.transpose(2, 3, 1, 0)
  flat["patch_embed.bias"] = sd.pop("patch_embed.proj.bias", None)
  for i in range(dd.DEPTH):
    p = f"blocks.{i}."
    for n in ("norm1", "norm2"):
      flat[p + n + ".scale"], flat[p + n + ".bias"] = sd.pop(p + n + ".weight", None), sd.pop(p + n + ".bias", None)
    qkv, qkv_b = sd.pop(p + "attn.qkv.weight", None), sd.pop(p + "attn.qkv.bias", None)
    if qkv is None or qkv_b is None or qkv.shape != (3 * D, D) or qkv_b.shape != (3 * D,):
      raise CheckpointError(f"{source}: {p}attn.qkv missing or not ({3 * D}, {D})")
    for j, n in enumerate(("query", "key", "value")):
      flat[p + "attn." + n] = _linear(qkv[j * D:(j + 1) * D]).reshape(D, H, HD)
      flat[p + "attn." + n + "_bias"] = (np.zeros((H, HD), np.float32) if n == "key"
                                         else qkv_b[j * D:(j + 1) * D].reshape(H, HD))
    proj = sd.pop(p + "attn.proj.weight", None)
    flat[p + "attn.out"] = None if proj is None else _linear(proj).reshape(H, HD, D)
    flat[p + "attn.out_bias"] = sd.pop(p + "attn.proj.bias", None)
    for n in ("fc1", "fc2"):
      w = sd.pop(p + f"mlp.{n}.weight", None)
      flat[p + f"mlp.{n}.kernel"] = None if w is None else _linear(w)
      flat[p + f"mlp.{n}.bias"] = sd.pop(p + f"mlp.{n}.bias", None)
  missing = sorted(k for k, v in flat.items() if v is None)
  if missing or sd:
    raise CheckpointError(f"{source}: not a DINO ViT-S/16 state dict: missing (our names) "
                          f"{missing[:8]}, unexpected {sorted(sd)[:8]}")
  _check_shapes(flat, _backbone_shapes(), source)
  return flat


def _backbone_shapes() -> dict[str, tuple[int, ...]]:
  model = nnx.eval_shape(lambda: dd.DinoViTSmall(rngs=nnx.Rngs(0)))
  return _shapes(model, nnx.Param)


def _shapes(module, kind) -> dict[str, tuple[int, ...]]:
  return flat_shapes(nnx.to_pure_dict(nnx.state(module, kind)))


def _check_shapes(flat, want, source):
  problems = weight_files.fit_problems({k: np.shape(v) for k, v in flat.items()}, want)
  if problems:
    raise CheckpointError(f"{source}: " + " | ".join(problems))


_HEAD_PARTS = {"0.0": "conv1", "0.1": "norm1", "1.fn.0": "conv2", "1.fn.1": "norm2", "2": "out"}
_LEAF = {"weight_orig": "weight", "bias": "bias", "weight_u": "u", "weight_v": "v", "weight": "scale"}


def heads_from_torch(sd: Mapping[str, np.ndarray], source: str = "DINO discriminator"
                     ) -> tuple[dict, dict]:
  """The official DinoDisc `heads.*` state dict -> (our flat params, our flat spectral state)."""
  params, stats = {}, {}
  pattern = re.compile(r"heads\.(\d+)\.(0\.0|0\.1|1\.fn\.0|1\.fn\.1|2)\.(\w+)$")
  for key, value in sd.items():
    m = pattern.match(key)
    leaf = m and _LEAF.get(m.group(3))
    if not m or not leaf or (m.group(3) == "weight" and "norm" not in _HEAD_PARTS[m.group(2)]):
      raise CheckpointError(f"{source}: unexpected entry {key} for the DINO discriminator heads")
    part = _HEAD_PARTS[m.group(2)]
    name = f"heads.{m.group(1)}.{part}.{leaf}"
    a = np.asarray(value, np.float32)
    if leaf == "weight":
      a = a.transpose(2, 1, 0)                                  # (out, in, k) -> (k, in, out)
    (stats if leaf in ("u", "v") else params)[name] = a
  model = nnx.eval_shape(lambda: dd.DinoDiscriminatorHeads(rngs=nnx.Rngs(0)))
  _check_shapes(params, _shapes(model, nnx.Param), source)
  _check_shapes(stats, _shapes(model, nnx.BatchStat), source)
  return params, stats


def load_backbone(path: str, dtype=jnp.float32) -> dd.DinoViTSmall:
  """The backbone from a file written by this converter (strict)."""
  flat, _ = weight_files.load_flat(path, expect_model=dd.MODEL_NAME)
  return weight_files.module_from_flat(
      nnx.eval_shape(lambda: dd.DinoViTSmall(rngs=nnx.Rngs(0), dtype=dtype)), flat, path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert.dino_discriminator",
      description="Convert DINO ViT-S/16 weights (the DINO discriminator's frozen backbone).")
  parser.add_argument("--src", required=True, help="dino_deitsmall16_pretrain.pth")
  parser.add_argument("--out", required=True, help="output .safetensors file")
  args = parser.parse_args(argv)
  try:
    flat = backbone_from_torch(weight_files.read_torch_state_dict(args.src), args.src)
    weight_files.save_flat(args.out, flat, metadata={"model": dd.MODEL_NAME})
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{dd.MODEL_NAME}: {len(flat)} tensors, {sum(v.size for v in flat.values()):,} parameters "
        f"from {args.src} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
