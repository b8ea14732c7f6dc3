"""Converts the LPIPS-VGG weights (two PyTorch files) into one gigatok_jax parameter file.

Why two inputs: the `lpips` package ships only the five small linear heads
(`lpips/weights/v0.1/vgg.pth`); the VGG16 trunk is torchvision's ImageNet file
`vgg16-397923af.pth`, which ships in no package and must be downloaded by the user. See
docs/checkpoint_layouts.md section 4 for both layouts.

  torchvision `features.{idx}.weight` (Cout, Cin, 3, 3) -> `convs.{j}.kernel` (3, 3, Cin, Cout)
  torchvision `features.{idx}.bias`   (Cout,)           -> `convs.{j}.bias`
      idx = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 for j = 0 .. 12
  lpips `lin{k}.model.1.weight`       (1, C_k, 1, 1)    -> `heads.{k}.kernel` (1, 1, C_k, 1)

`classifier.*` (the VGG16 fully connected layers) is ignored on purpose; any other leftover,
missing or mis-shaped entry is a CheckpointError naming it.

  python -m gigatok_jax.convert.lpips --vgg=vgg16-397923af.pth [--heads=vgg.pth] \
      --out=lpips_vgg16.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError, UserError
from gigatok_jax.models.lpips import BLOCKS, LPIPS, TAP_CHANNELS, torchvision_conv_indices

MODEL_NAME = "lpips_vgg16"
HEADS_RELPATH = ("weights", "v0.1", "vgg.pth")
HEADS_MD5 = "d507d7349b931f0638a25a48a722f98a"   # lpips 0.1.4's vgg.pth (layouts section 4)
IGNORED_VGG_PREFIXES = ("classifier.",)          # VGG16 fully connected layers, unused by LPIPS
INSTALL_HINT = "pip install --no-deps lpips==0.1.4"


def _conv_shapes() -> list[tuple[int, int]]:
  """(Cin, Cout) of the 13 VGG convs in order."""
  out, cin = [], 3
  for widths in BLOCKS:
    for cout in widths:
      out.append((cin, cout))
      cin = cout
  return out


def _check(source: str, sd: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
           ignored_prefixes: tuple[str, ...] = ()) -> list[str]:
  """Problems (missing / unexpected / mis-shaped entries) of one state dict, as messages."""
  have = {k: np.shape(v) for k, v in sd.items() if not k.startswith(ignored_prefixes)}
  return [f"{source}: {p}" for p in weight_files.fit_problems(have, expected, limit=10**6)]


def convert(vgg_sd: Mapping[str, np.ndarray], heads_sd: Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
  """torchvision VGG16 state dict + lpips heads state dict -> our flat {name: float32 array}."""
  indices = torchvision_conv_indices()
  shapes = _conv_shapes()
  vgg_expected = {}
  for idx, (cin, cout) in zip(indices, shapes):
    vgg_expected[f"features.{idx}.weight"] = (cout, cin, 3, 3)
    vgg_expected[f"features.{idx}.bias"] = (cout,)
  heads_expected = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
  problems = (_check("VGG16 weights", vgg_sd, vgg_expected, IGNORED_VGG_PREFIXES)
              + _check("LPIPS heads", heads_sd, heads_expected))
  if problems:
    raise CheckpointError("cannot convert LPIPS-VGG weights: " + " | ".join(problems))

  flat = {}
  for j, idx in enumerate(indices):
    w = np.asarray(vgg_sd[f"features.{idx}.weight"], np.float32)       # (Cout, Cin, 3, 3)
    flat[f"convs.{j}.kernel"] = w.transpose(2, 3, 1, 0)               # (3, 3, Cin, Cout)
    flat[f"convs.{j}.bias"] = np.asarray(vgg_sd[f"features.{idx}.bias"], np.float32)
  for k in range(len(TAP_CHANNELS)):
    w = np.asarray(heads_sd[f"lin{k}.model.1.weight"], np.float32)     # (1, C, 1, 1)
    flat[f"heads.{k}.kernel"] = w.transpose(2, 3, 1, 0)               # (1, 1, C, 1)
  return flat


def default_heads_path() -> str:
  """Path of `weights/v0.1/vgg.pth` inside the installed `lpips` package, found without importing
  it (importing lpips needs torchvision)."""
  try:
    spec = importlib.util.find_spec("lpips")
  except (ImportError, ValueError):
    spec = None
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  if not locations:
    raise CheckpointError("the LPIPS heads file ships with the `lpips` package, which is not "
                          f"installed: `{INSTALL_HINT}` (torchvision is not needed), or pass "
                          "--heads=/path/to/vgg.pth")
  for root in locations:
    path = os.path.join(root, *HEADS_RELPATH)
    if os.path.isfile(path):
      return path
  raise CheckpointError(f"the installed `lpips` package ({locations[0]}) has no "
                        f"{'/'.join(HEADS_RELPATH)}: reinstall it (`{INSTALL_HINT}`) or pass "
                        "--heads=/path/to/vgg.pth")


def md5sum(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def load_lpips(path: str, dtype=jnp.float32, param_dtype=jnp.float32) -> LPIPS:
  """An LPIPS module with the weights of a file written by this converter (strict)."""
  flat, _ = weight_files.load_flat(path, expect_model=MODEL_NAME)
  model = LPIPS(rngs=0, dtype=dtype, param_dtype=param_dtype)
  weight_files.assign_flat(model, flat, path)
  return model


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert.lpips",
      description="Convert torchvision VGG16 + lpips v0.1 heads into one LPIPS-VGG weight file.")
  parser.add_argument("--vgg", required=True,
                      help="torchvision VGG16 ImageNet weights (vgg16-397923af.pth)")
  parser.add_argument("--heads", default=None,
                      help="lpips linear heads (default: weights/v0.1/vgg.pth of the installed "
                           "lpips package)")
  parser.add_argument("--out", required=True, help="output .safetensors file")
  args = parser.parse_args(argv)
  try:
    heads = args.heads or default_heads_path()
    flat = convert(weight_files.read_torch_state_dict(args.vgg),
                   weight_files.read_torch_state_dict(heads))
    weight_files.save_flat(args.out, flat, metadata={"model": MODEL_NAME})
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  md5 = md5sum(heads)
  note = "lpips 0.1.4 heads" if md5 == HEADS_MD5 else f"heads md5 {md5} (not lpips 0.1.4's)"
  n = sum(v.size for v in flat.values())
  print(f"{MODEL_NAME}: {len(flat)} tensors, {n:,} parameters from {args.vgg} + {heads} "
        f"({note}) -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
