"""The name rules between official GigaTok checkpoints (tokenizers, PatchGAN, GPTs) and our trees.

One mapping per model kind, built from our own parameter names and shapes (abstract, nothing is
allocated), serves both directions: import (PyTorch state dict -> our flat params) and export
(ours -> the reference layout), so a round trip is the identity by construction and the strict
checks (every source tensor used once, every target filled, shapes equal) come for free.
Layouts: docs/checkpoint_layouts.md §0-2.

Tokenizer (`VQVitModelPlus` / `VQVitModel2DPlus`), ours -> reference:
  *.scale                          -> *.weight                     (LayerNorm / GroupNorm)
  conv *.kernel (kh, kw, I, O)     -> *.weight (O, I, kh, kw)
  Dense *.kernel (I, O)            -> *.weight (O, I)              (nn.Linear)
  quant_conv, post_quant_conv, s2to1encoder.conv_out kernel (I, O) -> weight (O, I, 1, 1) (1x1 conv)
  *.stack.transformer.{i}.         -> *.transformer.{i}.
  s2dencoder.embed / s2ddecoder.embed -> s2dencoder.encoder_embed / s2ddecoder.decoder_embed (2D;
                                     the 1D Q-Formers' names already match)
  *.stack.layers.* (model.scan_layers: (L, ...) stacks) -> unrolled first (models/layer_layout.py)
  ...mlp.fc1 / mlp.fc2             -> ...linear1 / linear2
  ...{self_attn,multihead_attn}.{query,key,value} (W, H, D) x3 -> in_proj_weight (3W, W), rows q|k|v
  ...{query,key,value}_bias (H, D) x3                          -> in_proj_bias (3W,)
  ...out (H, D, W) / out_bias      -> ...out_proj.weight (W, W) / out_proj.bias
  plain 2D layers: norm3           -> norm2                        (TransformerLayer has 2 norms)
  distill_mlp.fc1 / fc2 / fc3      -> distill_mlp.0 / 2 / 4
  *positional_embedding (N, W)     -> (N, 1, W)
  encoder.conv_blocks.{l}.downsample -> encoder.conv_blocks.{l}.downsample.conv
  quantize.embedding (K, D)        -> quantize.embedding.weight
  (reference only) quantize.codebook_used (65536,): a training-time usage buffer, dropped on
  import and written as zeros on export (as the reference initialises it).
PatchGAN discriminator (the checkpoint's `discriminator` entry): convs.{0..4} -> main.{0,2,5,8,11},
norms.{1..3} -> main.{3,6,9} (scale/bias -> weight/bias, mean/var -> running_mean/running_var;
num_batches_tracked dropped).

GPT (`gpt_1d.py`), ours -> reference:
  tok_embeddings -> tok_embeddings.weight; cls_embedding -> cls_embedding.embedding_table.weight;
  positional_embedding as is; layers.{i}.attention.wqkv (W, 3, H, D) -> .wqkv.weight (3W, W);
  .wo (H, D, W) -> .wo.weight (W, W); feed_forward.w{1,2,3}.kernel -> .weight (transposed);
  *norm.scale -> *norm.weight; output (W, V) -> output.weight (V, W).

Recipes, files and run directories (import / export) are convert/release.py's job; the CLI is
convert/cli.py (`python -m gigatok_jax.convert`). This module imports neither runs nor inference.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError
from gigatok_jax.models import layer_layout

CODEBOOK_USED = ("quantize.codebook_used", (65536,))
# Source tensors that carry no weights of ours, dropped on import on purpose.
IGNORED_SUFFIXES = ("num_batches_tracked",)
# Our 2D ViT input layer is `embed`; the reference's (VQVitModel2DPlus) `encoder_embed` /
# `decoder_embed`, as in the 1D Q-Formers (docs/checkpoint_layouts.md 1.3, 1.5).
EMBED_2D = {"s2dencoder.embed": "s2dencoder.encoder_embed",
            "s2ddecoder.embed": "s2ddecoder.decoder_embed"}
# Keys written by exports before the 2D embedding names were mapped (issue 23) -> today's keys.
LEGACY_KEYS = {f"{ours}.{leaf}": f"{ref}.{leaf}" for ours, ref in EMBED_2D.items()
               for leaf in ("weight", "bias")}


@dataclasses.dataclass(frozen=True)
class Rule:
  """One reference tensor and the parameter(s) of ours it holds, with both transforms."""
  torch_key: str
  torch_shape: tuple[int, ...]
  ours: tuple[str, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_torch: Callable[..., np.ndarray]


def _one(torch_key, torch_shape, ours, to_ours, to_torch) -> Rule:
  return Rule(torch_key, tuple(torch_shape), (ours,), lambda t: (to_ours(t),), to_torch)


# ------------------------------------------------------------------------------ tokenizer names
_ONE_BY_ONE_CONVS = ("quant_conv", "post_quant_conv", "s2to1encoder.conv_out")
_LAYER = re.compile(r"^(.*\.stack\.transformer\.\d+)\.")
_MHA = re.compile(r"^(.*\.(?:self_attn|multihead_attn))\.(query|key|value|out)(_bias)?$")


def _tokenizer_torch_prefix(name: str, plain_layers: set[str]) -> str:
  """Our module path -> the reference's (without the last tensor name)."""
  name = EMBED_2D.get(name, name)
  name = name.replace(".stack.transformer.", ".transformer.")
  name = name.replace(".mlp.fc1", ".linear1").replace(".mlp.fc2", ".linear2")
  name = re.sub(r"distill_mlp\.fc([123])", lambda m: f"distill_mlp.{2 * int(m.group(1)) - 2}", name)
  name = re.sub(r"^encoder\.conv_blocks\.(\d+)\.downsample$", r"encoder.conv_blocks.\1.downsample.conv",
                name)
  layer = name.rsplit(".", 1)[0]
  if name.endswith(".norm3") and layer in plain_layers:
    name = layer + ".norm2"
  return name


def _attention_rules(prefix: str, shapes: Mapping[str, tuple[int, ...]], torch_prefix: str
                     ) -> list[Rule]:
  w, h, d = shapes[f"{prefix}.query"]
  names = tuple(f"{prefix}.{p}" for p in ("query", "key", "value"))
  biases = tuple(f"{n}_bias" for n in names)
  return [
      Rule(f"{torch_prefix}.in_proj_weight", (3 * w, w), names,
           lambda t: tuple(part.T.reshape(w, h, d) for part in np.split(t, 3, axis=0)),
           lambda q, k, v: np.concatenate([x.reshape(w, h * d).T for x in (q, k, v)], axis=0)),
      Rule(f"{torch_prefix}.in_proj_bias", (3 * w,), biases,
           lambda t: tuple(part.reshape(h, d) for part in np.split(t, 3)),
           lambda q, k, v: np.concatenate([x.reshape(-1) for x in (q, k, v)])),
      _one(f"{torch_prefix}.out_proj.weight", (w, h * d), f"{prefix}.out",
           lambda t: t.T.reshape(h, d, w), lambda o: o.reshape(h * d, w).T),
      _one(f"{torch_prefix}.out_proj.bias", (w,), f"{prefix}.out_bias", lambda t: t, lambda o: o),
  ]


def tokenizer_rules(shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  """The mapping for a tokenizer whose flat parameter shapes (ours) are `shapes`.

  The rules name parameters in the unrolled layout (`layer_layout.py`); scanned shapes are
  unrolled first, and scanned parameters are converted at the boundary (import / export).
  """
  shapes = layer_layout.to_unrolled(shapes)
  layers = {m.group(1) for n in shapes if (m := _LAYER.match(n))}
  plain = {_tokenizer_torch_prefix(layer, set()) for layer in layers
           if not any(n.startswith(layer + ".multihead_attn.") for n in shapes)}
  rules, done = [], set()
  for name in sorted(shapes):
    if name in done:
      continue
    shape = shapes[name]
    m = _MHA.match(name)
    if m:
      prefix = m.group(1)
      group = _attention_rules(prefix, shapes, _tokenizer_torch_prefix(prefix, plain))
      rules += group
      done.update(n for r in group for n in r.ours)
      continue
    module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    tp = _tokenizer_torch_prefix(module, plain)
    if name == "quantize.embedding":
      rules.append(_one("quantize.embedding.weight", shape, name, lambda t: t, lambda o: o))
    elif leaf.endswith("positional_embedding"):
      n_pos, width = shape
      rules.append(_one(f"{tp}.{leaf}" if tp else leaf, (n_pos, 1, width), name,
                        lambda t: t[:, 0], lambda o: o[:, None]))
    elif leaf == "scale":
      rules.append(_one(f"{tp}.weight", shape, name, lambda t: t, lambda o: o))
    elif leaf == "bias":
      rules.append(_one(f"{tp}.bias", shape, name, lambda t: t, lambda o: o))
    elif leaf == "kernel" and len(shape) == 4:
      kh, kw, cin, cout = shape
      rules.append(_one(f"{tp}.weight", (cout, cin, kh, kw), name,
                        lambda t: t.transpose(2, 3, 1, 0), lambda o: o.transpose(3, 2, 0, 1)))
    elif leaf == "kernel" and len(shape) == 2 and module in _ONE_BY_ONE_CONVS:
      cin, cout = shape
      rules.append(_one(f"{tp}.weight", (cout, cin, 1, 1), name,
                        lambda t: t[:, :, 0, 0].T, lambda o: o.T[:, :, None, None]))
    elif leaf == "kernel" and len(shape) == 2:
      cin, cout = shape
      rules.append(_one(f"{tp}.weight", (cout, cin), name, lambda t: t.T, lambda o: o.T))
    else:
      raise AssertionError(f"no reference name for our parameter {name} {shape}")
    done.add(name)
  return rules


def discriminator_rules(shapes: Mapping[str, tuple[int, ...]],
                        stat_shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  """PatchGAN: our convs/norms (params and BatchNorm stats) <-> the reference's `main.{idx}`."""
  n_convs = len({n.split(".")[1] for n in shapes if n.startswith("convs.")})
  # Sequential indices: conv, [BN,] LeakyReLU per layer; the last conv has neither.
  conv_idx, norm_idx, i = [], {}, 0
  for k in range(n_convs):
    conv_idx.append(i)
    i += 1
    if f"norms.{k}.scale" in shapes:
      norm_idx[k] = i
      i += 1
    i += 1                                       # LeakyReLU (no keys)
  rules = []
  for name, shape in sorted(shapes.items()):
    kind, k, leaf = name.split(".")
    k = int(k)
    idx = conv_idx[k] if kind == "convs" else norm_idx[k]
    if leaf == "kernel":
      kh, kw, cin, cout = shape
      rules.append(_one(f"main.{idx}.weight", (cout, cin, kh, kw), name,
                        lambda t: t.transpose(2, 3, 1, 0), lambda o: o.transpose(3, 2, 0, 1)))
    else:
      rules.append(_one(f"main.{idx}.{'weight' if leaf == 'scale' else 'bias'}", shape, name,
                        lambda t: t, lambda o: o))
  for name, shape in sorted(stat_shapes.items()):
    _, k, leaf = name.split(".")
    key = f"main.{norm_idx[int(k)]}.running_{leaf}"
    rules.append(_one(key, shape, "stats:" + name, lambda t: t, lambda o: o))
  return rules


def gpt_rules(shapes: Mapping[str, tuple[int, ...]]) -> list[Rule]:
  rules = []
  for name, shape in sorted(shapes.items()):
    if name == "tok_embeddings":
      rules.append(_one("tok_embeddings.weight", shape, name, lambda t: t, lambda o: o))
    elif name == "cls_embedding":
      rules.append(_one("cls_embedding.embedding_table.weight", shape, name, lambda t: t,
                        lambda o: o))
    elif name == "positional_embedding":
      rules.append(_one(name, shape, name, lambda t: t, lambda o: o))
    elif name.endswith(".wqkv"):
      w, three, h, d = shape
      rules.append(_one(name + ".weight", (three * h * d, w), name,
                        lambda t, s=shape: t.T.reshape(s), lambda o, w=w: o.reshape(w, -1).T))
    elif name.endswith(".wo"):
      h, d, w = shape
      rules.append(_one(name + ".weight", (w, h * d), name,
                        lambda t, s=shape: t.T.reshape(s), lambda o, w=w: o.reshape(-1, w).T))
    elif name == "output":
      rules.append(_one("output.weight", shape[::-1], name, lambda t: t.T, lambda o: o.T))
    elif name.endswith(".kernel"):
      rules.append(_one(name[:-len(".kernel")] + ".weight", shape[::-1], name, lambda t: t.T,
                        lambda o: o.T))
    elif name.endswith(".scale"):
      rules.append(_one(name[:-len(".scale")] + ".weight", shape, name, lambda t: t, lambda o: o))
    else:
      raise AssertionError(f"no reference name for our GPT parameter {name} {shape}")
  return rules


# ---------------------------------------------------------------------------- apply a mapping
def upgrade_legacy_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
  """`sd` with the keys of older exports of ours renamed to the reference's (LEGACY_KEYS)."""
  return {(LEGACY_KEYS[k] if k in LEGACY_KEYS and LEGACY_KEYS[k] not in sd else k): v
          for k, v in sd.items()}


def from_torch(rules: list[Rule], sd: Mapping[str, np.ndarray], what: str,
               extra: Mapping[str, tuple[int, ...]] = {}) -> dict[str, np.ndarray]:  # noqa: B006
  """Our flat params from a reference state dict; strict (lists every problem at once).

  `extra`: reference-only tensors that may be present (then with this shape) and are dropped.
  """
  have = {k: tuple(np.shape(v)) for k, v in sd.items() if not k.endswith(IGNORED_SUFFIXES)}
  expected = {r.torch_key: r.torch_shape for r in rules}
  expected.update({k: shape for k, shape in extra.items() if k in have})
  problems = weight_files.fit_problems(have, expected)
  if problems:
    raise CheckpointError(f"{what}: does not match the model: " + " | ".join(problems))
  out = {}
  for r in rules:
    for name, value in zip(r.ours, r.to_ours(np.asarray(sd[r.torch_key], np.float32))):
      out[name] = np.ascontiguousarray(value)
  return out


def to_torch(rules: list[Rule], flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The reference state dict of our flat params (the inverse of `from_torch`)."""
  return {r.torch_key: np.ascontiguousarray(r.to_torch(*(np.asarray(flat[n]) for n in r.ours)))
          for r in rules}


# -------------------------------------------------------------------------------- our models
def abstract_tokenizer(config) -> tuple[Any, Any, Any]:
  """(generator params, discriminator params, discriminator stats) as abstract pure dicts."""
  from gigatok_jax import build  # pylint: disable=import-outside-toplevel
  disc = build.discriminator(config)
  return build.tokenizer(config).abstract, disc.abstract, disc.stats


def abstract_gpt(config) -> Any:
  from gigatok_jax import build  # pylint: disable=import-outside-toplevel
  return build.gpt(config).abstract
