"""Converts pytorch-fid's InceptionV3 weights (`pt_inception-2015-12-05-6726825d.pth`) to our file.

The file is a torchvision `Inception3` state dict (num_classes=1008, aux_logits=False; see
docs/checkpoint_layouts.md section 5). Per BasicConv `P` (e.g.
`Mixed_6b.branch7x7_2`):

  P.conv.weight        (O, I, kH, kW) -> P.conv.kernel (kH, kW, I, O)
  P.bn.weight          (O,)           -> P.bn.scale
  P.bn.bias            (O,)           -> P.bn.bias
  P.bn.running_mean    (O,)           -> P.bn.mean
  P.bn.running_var     (O,)           -> P.bn.var
  P.bn.num_batches_tracked ()         -> ignored (a training counter; may or may not be saved)
  fc.weight (1008, 2048) -> fc.kernel (2048, 1008);  fc.bias (1008,) -> fc.bias

Strict: every other tensor is used exactly once; missing, leftover or mis-shaped entries are
listed in one CheckpointError. The expected names and shapes come from the module itself, so the
converter and `FIDInception` cannot drift apart.

  python -m gigatok_jax.convert.inception --weights=pt_inception-2015-12-05-6726825d.pth \
      --out=fid_inception.safetensors
"""

from __future__ import annotations

import argparse
import sys
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError, UserError
from gigatok_jax.models.inception import MODEL_NAME, FIDInception

# our leaf name -> (torch leaf name, numpy transform of the torch tensor)
_LEAVES = {
    "conv.kernel": ("conv.weight", lambda w: w.transpose(2, 3, 1, 0)),    # OIHW -> HWIO
    "bn.scale": ("bn.weight", None),
    "bn.bias": ("bn.bias", None),
    "bn.mean": ("bn.running_mean", None),
    "bn.var": ("bn.running_var", None),
    "fc.kernel": ("fc.weight", lambda w: w.T),                           # (out, in) -> (in, out)
    "fc.bias": ("fc.bias", None),
}
IGNORED_SUFFIX = ".bn.num_batches_tracked"


def _abstract_model(dtype=jnp.float32, param_dtype=jnp.float32) -> FIDInception:
  return nnx.eval_shape(lambda: FIDInception(rngs=0, dtype=dtype, param_dtype=param_dtype))


def our_shapes() -> dict[str, tuple[int, ...]]:
  """{our flat name: shape} of every FIDInception parameter (built abstractly: no init)."""
  params = nnx.to_flat_state(nnx.state(_abstract_model(), nnx.Param))
  return {".".join(str(p) for p in path): tuple(var.get_value().shape)
          for path, var in params}


def torch_name(ours: str) -> tuple[str, object]:
  """Our flat name -> (torch state-dict key, transform or None)."""
  for leaf, (tleaf, fn) in _LEAVES.items():
    if ours == leaf or ours.endswith("." + leaf):
      return ours[: len(ours) - len(leaf)] + tleaf, fn
  raise AssertionError(f"no torch name for parameter {ours}")  # a model/converter bug


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """{torch key: torch shape} the converter requires (472 keys, no num_batches_tracked)."""
  out = {}
  for name, shape in our_shapes().items():
    key, _ = torch_name(name)
    if name.endswith("conv.kernel"):
      kh, kw, i, o = shape
      shape = (o, i, kh, kw)
    elif name.endswith("fc.kernel"):
      shape = shape[::-1]
    out[key] = shape
  return out


def convert(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pytorch-fid / torchvision Inception3 state dict -> our flat {name: float32 array} (strict)."""
  expected = expected_torch_shapes()
  have = {}
  for k, v in sd.items():
    if k.endswith(IGNORED_SUFFIX):
      stem = k[: -len("num_batches_tracked")]
      if stem + "running_mean" in expected and np.size(v) == 1:
        continue            # a BN training counter of a known BN: not a weight
    have[k] = tuple(np.shape(v))
  problems = weight_files.fit_problems(have, expected, limit=10**6)
  if problems:
    raise CheckpointError("cannot convert FID InceptionV3 weights: " + " | ".join(problems))
  flat = {}
  for name in our_shapes():
    key, fn = torch_name(name)
    w = np.asarray(sd[key], np.float32)
    flat[name] = np.ascontiguousarray(fn(w) if fn is not None else w)
  return flat


def model_from_flat(flat: Mapping[str, np.ndarray], *, dtype=jnp.float32,
                    param_dtype=jnp.float32, source: str = "converted FID Inception weights"
                    ) -> FIDInception:
  """FIDInception holding `flat` (strict names and shapes, see weight_files.assign_flat).

  Built abstractly, then filled with zeros and the weights: no random init.
  """
  return weight_files.module_from_flat(_abstract_model(dtype, param_dtype), flat, source)


def load(path: str, dtype=jnp.float32, param_dtype=jnp.float32) -> FIDInception:
  """FIDInception with the weights of a file written by this converter (strict)."""
  flat, _ = weight_files.load_flat(path, expect_model=MODEL_NAME)
  return model_from_flat(flat, dtype=dtype, param_dtype=param_dtype, source=path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert.inception",
      description="Convert pytorch-fid's InceptionV3 weights into a gigatok_jax weight file.")
  parser.add_argument("--weights", required=True,
                      help="pytorch-fid weights (pt_inception-2015-12-05-6726825d.pth)")
  parser.add_argument("--out", required=True, help="output .safetensors file")
  args = parser.parse_args(argv)
  try:
    flat = convert(weight_files.read_torch_state_dict(args.weights))
    weight_files.save_flat(args.out, flat, metadata={"model": MODEL_NAME})
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(v.size for v in flat.values())
  n_stats = sum(v.size for k, v in flat.items() if k.endswith((".bn.mean", ".bn.var")))
  print(f"{MODEL_NAME}: {len(flat)} tensors, {n - n_stats:,} parameters + {n_stats:,} BatchNorm "
        f"running statistics from {args.weights} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
