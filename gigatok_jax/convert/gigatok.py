"""Official GigaTok checkpoints (tokenizers and GPTs) <-> our parameter trees, and the CLI.

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

  python -m gigatok_jax.convert --src=VQ_BL256_e200.pt --out=runs/bl_official
  python -m gigatok_jax.convert --src=GPT_B_for_SS.pt --out=runs/gpt_b_official \
      --tokenizer_workdir=runs/ss_official
  python -m gigatok_jax.convert --export --src=runs/bl_official --out=bl.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Callable, Mapping

import numpy as np

from gigatok_jax import fileio
from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError, UserError
from gigatok_jax.models import layer_layout
from gigatok_jax.tree_names import flat_shapes, flatten, unflatten

TOKENIZER_RECIPES = ("tokenizer_ss", "tokenizer_sb", "tokenizer_bl", "tokenizer_xlxxl",
                     "tokenizer_ss_2d", "tokenizer_sb_2d", "tokenizer_bl_2d")
GPT_RECIPES = ("gpt_b", "gpt_l", "gpt_xl", "gpt_xxl")
CODEBOOK_USED = ("quantize.codebook_used", (65536,))
# Source tensors that carry no weights of ours, dropped on import on purpose.
IGNORED_SUFFIXES = ("num_batches_tracked",)


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


# ------------------------------------------------------------------------------ recipes & models
def abstract_tokenizer(config) -> tuple[Any, Any, Any]:
  """(generator params, discriminator params, discriminator stats) as abstract pure dicts."""
  from gigatok_jax import build  # pylint: disable=import-outside-toplevel
  disc = build.discriminator(config)
  return build.tokenizer(config).abstract, disc.abstract, disc.stats


def abstract_gpt(config) -> Any:
  from gigatok_jax import build  # pylint: disable=import-outside-toplevel
  return build.gpt(config).abstract


def _layer_count(sd: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return len({m.group(1) for k in sd if (m := pattern.match(k))})


def kind_of(sd: Mapping[str, Any]) -> str:
  if "tok_embeddings.weight" in sd:
    return "gpt"
  if any(k.startswith(("s2to1encoder.", "s2dencoder.")) for k in sd):
    return "tokenizer"
  raise CheckpointError("the weights are neither a GigaTok tokenizer (no s2to1encoder.* / "
                        "s2dencoder.* keys) nor a GigaTok GPT (no tok_embeddings.weight); first "
                        f"keys: {sorted(sd)[:8]}")


def tokenizer_dims(sd: Mapping[str, Any]) -> dict[str, Any]:
  """The recipe-relevant sizes read off a tokenizer state dict."""
  enc, dec = ("s2to1encoder", "s1to2decoder") if "s2to1encoder.ln_post.weight" in sd else \
      ("s2dencoder", "s2ddecoder")
  return dict(kind="1d" if enc == "s2to1encoder" else "2d",
              enc_width=int(np.shape(sd[f"{enc}.ln_post.weight"])[0]),
              enc_layers=_layer_count(sd, f"{enc}.transformer."),
              dec_width=int(np.shape(sd[f"{dec}.ln_post.weight"])[0]),
              dec_layers=_layer_count(sd, f"{dec}.transformer."))


def gpt_dims(sd: Mapping[str, Any]) -> dict[str, Any]:
  vocab, width = np.shape(sd["tok_embeddings.weight"])
  out = dict(width=int(width), layers=_layer_count(sd, "layers."), vocab_size=int(vocab),
             num_classes=int(np.shape(sd["cls_embedding.embedding_table.weight"])[0]) - 1)
  if "positional_embedding" in sd:
    out.update(position="learned_1d", num_tokens=int(np.shape(sd["positional_embedding"])[0]) - 1)
  else:
    out["position"] = "rope_2d"
  return out


def dims_of(sd: Mapping[str, Any], kind: str) -> dict[str, Any]:
  try:
    return tokenizer_dims(sd) if kind == "tokenizer" else gpt_dims(sd)
  except KeyError as e:
    raise CheckpointError(f"not a complete GigaTok {kind} state dict: no {e}") from None


def infer_recipe(sd: Mapping[str, Any]) -> str:
  """The recipe (configs/<name>.py) whose sizes the checkpoint has; a clear error if none."""
  from gigatok_jax import config as config_lib
  kind = kind_of(sd)
  dims = dims_of(sd, kind)
  for name in (TOKENIZER_RECIPES if kind == "tokenizer" else GPT_RECIPES):
    m = config_lib.load_recipe(f"configs/{name}.py", key="--recipe").model
    keys = ("kind", "enc_width", "enc_layers", "dec_width", "dec_layers") if kind == "tokenizer" \
        else ("width", "layers")
    if all(m[k] == dims[k] for k in keys):
      return f"configs/{name}.py"
  raise CheckpointError(f"no recipe has the sizes of this {kind} checkpoint ({dims}); pass "
                        "--recipe=configs/<recipe>.py[:variant] with matching sizes")


def configure(recipe: str, sd: Mapping[str, Any]):
  """The recipe's config with the data-dependent sizes of a GPT (vocabulary, tokens, classes)."""
  from gigatok_jax import config as config_lib
  config = config_lib.load_recipe(recipe, key="--recipe")
  kind = kind_of(sd)
  if config.task != kind:
    raise CheckpointError(f"--recipe={recipe} is a {config.task} recipe but the weights are a "
                          f"{kind}")
  dims = dims_of(sd, kind)
  if kind == "gpt":
    for key in ("vocab_size", "num_classes", "position", "num_tokens"):
      if key in dims:
        config.model[key] = dims[key]
  mismatch = {k: (v, config.model[k]) for k, v in dims.items() if config.model[k] != v}
  if mismatch:
    inferred = ""
    try:
      inferred = f" (the checkpoint matches {infer_recipe(sd)})"
    except CheckpointError:
      pass
    raise CheckpointError(f"--recipe={recipe} does not match the checkpoint{inferred}: "
                          + ", ".join(f"{k} checkpoint {a} vs recipe {b}"
                                      for k, (a, b) in mismatch.items()))
  return config


# ------------------------------------------------------------------------------------- files
def pick_weights(raw: Mapping[str, Any], which: str, path: str) -> tuple[Mapping[str, Any], str]:
  """The state dict in a training checkpoint: `which` = 'ema', 'model' or 'auto' (the reference's
  own order: ema, else model, else state_dict; a bare state dict is taken as is)."""
  if any(not isinstance(v, Mapping) for k, v in raw.items() if k in ("model", "ema")):
    raise CheckpointError(f"{path}: its 'model'/'ema' entries are not state dicts")
  if which == "auto":
    for key in ("ema", "model", "state_dict", "module"):
      if isinstance(raw.get(key), Mapping):
        return raw[key], key
    return raw, "(whole file)"
  if not isinstance(raw.get(which), Mapping):
    raise CheckpointError(f"{path}: has no '{which}' weights (top-level entries: {sorted(raw)})")
  return raw[which], which


def read_checkpoint(path: str) -> dict[str, Any]:
  """A GigaTok `.pt`/`.pth` (torch.load weights_only, with the `args` Namespace allowed) or a
  `.safetensors` file, as nested dicts of float32 numpy arrays (ints kept, e.g. `steps`)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    return weight_files.read_torch_state_dict(path)
  try:
    import torch
  except ImportError as e:  # pragma: no cover - torch is a test dependency here
    raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs `pip install torch` (CPU "
                          "build is enough)") from e
  import argparse as _argparse
  try:
    with torch.serialization.safe_globals([_argparse.Namespace]):
      raw = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e

  def numpy(x):
    if hasattr(x, "detach"):
      x = x.detach().cpu()
      return x.float().numpy() if x.is_floating_point() else x.numpy()
    if isinstance(x, Mapping):
      return {k: numpy(v) for k, v in x.items()}
    return x
  if not isinstance(raw, Mapping):
    raise CheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
  return {k: numpy(v) for k, v in raw.items()}


def import_checkpoint(src: str, out: str, *, weights: str = "auto", recipe: str = "",
                      tokenizer_workdir: str = "", log=print) -> str:
  """Converts a released tokenizer or GPT file into run directory `out`; returns `out`."""
  from gigatok_jax import runs  # pylint: disable=import-outside-toplevel
  raw = read_checkpoint(src)
  sd, picked = pick_weights(raw, weights, src)
  kind = kind_of(sd)
  recipe = recipe or infer_recipe(sd)
  config = configure(recipe, sd)
  steps = raw.get("steps", 0)
  info = dict(source=os.path.abspath(src), source_sha256=fileio.sha256_file(src), weights=picked,
              recipe=recipe, kind=kind,
              source_steps=int(steps) if isinstance(steps, (int, np.integer)) else 0)
  if kind == "tokenizer":
    gen, disc, stats = abstract_tokenizer(config)
    gen_flat = from_torch(tokenizer_rules(flat_shapes(gen)), sd, f"{src} [{picked}]",
                          extra=dict([CODEBOOK_USED]))
    if layer_layout.is_scanned(flat_shapes(gen)):                 # model.scan_layers
      gen_flat = layer_layout.to_scanned(gen_flat)
    trees = {"gen_params": unflatten(gen_flat, gen)}
    disc_sd = raw.get("discriminator")
    if isinstance(disc_sd, Mapping) and "main.0.weight" in disc_sd:     # the PatchGAN layout
      rules = discriminator_rules(flat_shapes(disc), flat_shapes(stats))
      flat = from_torch(rules, raw["discriminator"], f"{src} [discriminator]")
      trees["disc_params"] = unflatten({k: v for k, v in flat.items()
                                        if not k.startswith("stats:")}, disc)
      trees["disc_stats"] = unflatten({k[len("stats:"):]: v for k, v in flat.items()
                                       if k.startswith("stats:")}, stats)
    elif disc_sd is not None:
      log(f"note: {src} has a non-PatchGAN discriminator (e.g. the B-L DINO discriminator); it is "
          "not imported, and training from these weights starts a fresh PatchGAN")
  else:
    if tokenizer_workdir:
      config.tokenizer.workdir = os.path.abspath(tokenizer_workdir)
    params = abstract_gpt(config)
    trees = {"params": unflatten(from_torch(gpt_rules(flat_shapes(params)), sd,
                                            f"{src} [{picked}]"), params)}
  os.makedirs(out, exist_ok=True)
  runs.write_config(config, out)
  runs.save_imported(out, trees, info)
  n = sum(int(np.size(x)) for x in flatten(trees[next(iter(trees))]).values())
  log(f"converted {kind} {src} ({picked} weights, {n:,} parameters, recipe {recipe}) -> {out}")
  return out


def export_run(workdir: str, out: str, log=print) -> str:
  """Writes a run's weights (latest checkpoint, else its imported weights) in the reference layout:
  `.safetensors` (flat state dict) or `.pt` ({'model': state dict, 'steps': step})."""
  import jax  # pylint: disable=import-outside-toplevel
  from gigatok_jax import inference, parallel, runs  # pylint: disable=import-outside-toplevel
  config = runs.read_config(workdir, key="--src")
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  flat = flatten(jax.device_get(loaded.params))
  step = loaded.step
  if config.task == "tokenizer":
    flat = layer_layout.to_unrolled(flat)
    sd = to_torch(tokenizer_rules({k: v.shape for k, v in flat.items()}), flat)
    sd[CODEBOOK_USED[0]] = np.zeros(CODEBOOK_USED[1], np.float32)
  else:
    sd = to_torch(gpt_rules({k: v.shape for k, v in flat.items()}), flat)
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = f"{out}.tmp-{os.getpid()}"
  if out.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file(sd, tmp, metadata={"steps": str(step)})
  else:
    import torch
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": int(step)}, tmp)
  os.replace(tmp, out)
  log(f"exported {config.task} of {workdir} (step {step}, {len(sd)} tensors) -> {out}")
  return out


# Adapters for gigatok_jax.weights (converter signature: (source paths, output path)).
def convert_tokenizer_file(src_paths: list[str], out_path: str) -> None:
  import_checkpoint(src_paths[0], out_path)


def convert_gpt_file(src_paths: list[str], out_path: str) -> None:
  import_checkpoint(src_paths[0], out_path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert",
      description="Import an official GigaTok tokenizer / GPT checkpoint as a gigatok_jax run "
                  "directory, or export a run to the reference layout.")
  parser.add_argument("--src", required=True,
                      help="import: the .pt/.pth/.safetensors file; export: a run directory")
  parser.add_argument("--out", required=True,
                      help="import: the run directory to create; export: a .safetensors/.pt file")
  parser.add_argument("--export", action="store_true", help="ours -> reference layout")
  parser.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                      help="which weights of a training checkpoint (auto: ema, else model)")
  parser.add_argument("--recipe", default="",
                      help="configs/<recipe>.py[:variant]; default: inferred from the shapes")
  parser.add_argument("--tokenizer_workdir", default="",
                      help="GPT import: the (converted) tokenizer run whose codes it models")
  args = parser.parse_args(argv)
  try:
    if args.export:
      export_run(args.src, args.out)
    else:
      import_checkpoint(args.src, args.out, weights=args.weights, recipe=args.recipe,
                        tokenizer_workdir=args.tokenizer_workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
