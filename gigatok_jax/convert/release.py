"""Released GigaTok files <-> our run directories: recipe inference, import and export.

Import reads a released tokenizer / GPT training checkpoint (convert/weight_files.py), picks its
weights (ema, else model), infers or checks the recipe from the tensor shapes, maps the names with
convert/gigatok.py's rules and writes a run directory (runs.py: config.json + `pretrained/`).
Export reads a run's latest weights (inference.py) and writes the reference layout back. The weights
cache (gigatok_jax.weights) converts the gigatok_* artefacts through `convert_release_file`.

  python -m gigatok_jax.convert --src=VQ_BL256_e200.pt --out=runs/bl_official
  python -m gigatok_jax.convert --src=GPT_B_for_SS.pt --out=runs/gpt_b_official \\
      --tokenizer_workdir=runs/ss_official
  python -m gigatok_jax.convert --export --src=runs/bl_official --out=bl.safetensors
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from gigatok_jax import config as config_lib
from gigatok_jax import fileio, runs
from gigatok_jax.convert import gigatok
from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError
from gigatok_jax.models import layer_layout
from gigatok_jax.tree_names import flat_shapes, flatten, unflatten

TOKENIZER_RECIPES = ("tokenizer_ss", "tokenizer_sb", "tokenizer_bl", "tokenizer_xlxxl",
                     "tokenizer_ss_2d", "tokenizer_sb_2d", "tokenizer_bl_2d")
GPT_RECIPES = ("gpt_b", "gpt_l", "gpt_xl", "gpt_xxl")


# ------------------------------------------------------------------------------------ recipes
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


# -------------------------------------------------------------------------------------- import
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


def import_checkpoint(src: str, out: str, *, weights: str = "auto", recipe: str = "",
                      tokenizer_workdir: str = "", log=print) -> str:
  """Converts a released tokenizer or GPT file into run directory `out`; returns `out`."""
  raw = weight_files.read_checkpoint(src)
  sd, picked = pick_weights(raw, weights, src)
  sd = gigatok.upgrade_legacy_keys(sd)                  # files of our exports before issue 23
  kind = kind_of(sd)
  recipe = recipe or infer_recipe(sd)
  config = configure(recipe, sd)
  steps = raw.get("steps", 0)
  info = dict(source=os.path.abspath(src), source_sha256=fileio.sha256_file(src), weights=picked,
              recipe=recipe, kind=kind,
              source_steps=int(steps) if isinstance(steps, (int, np.integer)) else 0)
  if kind == "tokenizer":
    gen, disc, stats = gigatok.abstract_tokenizer(config)
    gen_flat = gigatok.from_torch(gigatok.tokenizer_rules(flat_shapes(gen)), sd,
                                  f"{src} [{picked}]", extra=dict([gigatok.CODEBOOK_USED]))
    if layer_layout.is_scanned(flat_shapes(gen)):                 # model.scan_layers
      gen_flat = layer_layout.to_scanned(gen_flat)
    trees = {"gen_params": unflatten(gen_flat, gen)}
    disc_sd = raw.get("discriminator")
    if isinstance(disc_sd, Mapping) and "main.0.weight" in disc_sd:     # the PatchGAN layout
      rules = gigatok.discriminator_rules(flat_shapes(disc), flat_shapes(stats))
      flat = gigatok.from_torch(rules, raw["discriminator"], f"{src} [discriminator]")
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
    params = gigatok.abstract_gpt(config)
    trees = {"params": unflatten(gigatok.from_torch(gigatok.gpt_rules(flat_shapes(params)), sd,
                                                   f"{src} [{picked}]"), params)}
  os.makedirs(out, exist_ok=True)
  runs.write_config(config, out)
  runs.save_imported(out, trees, info)
  n = sum(int(np.size(x)) for x in flatten(trees[next(iter(trees))]).values())
  log(f"converted {kind} {src} ({picked} weights, {n:,} parameters, recipe {recipe}) -> {out}")
  return out


def convert_release_file(src_paths: list[str], out_path: str) -> None:
  """The weights-cache adapter (`fn(source paths, output path)`) of every gigatok_* artefact."""
  import_checkpoint(src_paths[0], out_path)


# -------------------------------------------------------------------------------------- export
def export_run(workdir: str, out: str, log=print) -> str:
  """Writes a run's weights (latest checkpoint, else its imported weights) in the reference layout:
  `.safetensors` (flat state dict) or `.pt` ({'model': state dict, 'steps': step})."""
  import jax  # pylint: disable=import-outside-toplevel
  from gigatok_jax import inference, parallel  # pylint: disable=import-outside-toplevel
  config = runs.read_config(workdir, key="--src")
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  flat = flatten(jax.device_get(loaded.params))
  step = loaded.step
  if config.task == "tokenizer":
    flat = layer_layout.to_unrolled(flat)
    sd = gigatok.to_torch(gigatok.tokenizer_rules({k: v.shape for k, v in flat.items()}), flat)
    sd[gigatok.CODEBOOK_USED[0]] = np.zeros(gigatok.CODEBOOK_USED[1], np.float32)
  else:
    sd = gigatok.to_torch(gigatok.gpt_rules({k: v.shape for k, v in flat.items()}), flat)
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  with fileio.atomic_write(out, "wb") as f:
    if out.endswith(".safetensors"):
      from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
      f.write(save(sd, metadata={"steps": str(step)}))
    else:
      import torch  # pylint: disable=import-outside-toplevel
      torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": int(step)}, f)
  log(f"exported {config.task} of {workdir} (step {step}, {len(sd)} tensors) -> {out}")
  return out
