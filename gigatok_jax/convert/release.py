"""Released GigaTok files <-> our run directories: sizes, heads, import and export.

Import reads a released tokenizer / GPT training checkpoint (convert/weight_files.py), picks its
weights (ema, else model), reads its sizes off the tensor shapes, settles the attention head counts,
maps the names with convert/gigatok.py's rules and writes a run directory (runs.py: config.json +
`pretrained/`). Export reads a run's latest weights (inference.py) and writes the reference layout
back. The weights cache (gigatok_jax.weights) converts the gigatok_* artefacts through
`convert_release_file`.

  python -m gigatok_jax.convert --src=VQ_BL256_e200.pt --out=runs/bl_official
  python -m gigatok_jax.convert --src=VQ_custom.pt --out=runs/custom \\
      --config.model.enc_heads=10 --config.model.dec_heads=12
  python -m gigatok_jax.convert --src=GPT_B_for_SS.pt --out=runs/gpt_b_official \\
      --tokenizer_workdir=runs/ss_official
  python -m gigatok_jax.convert --export --src=runs/bl_official --out=bl.safetensors

Sizes. Every size the shapes determine is read from the file: tokenizer kind (1d/2d) and 2D layer
type, transformer widths and depths, mlp_ratio, the CNN (cnn_ch, cnn_ch_mult, cnn_num_res_blocks,
z_channels), codebook_size, code_dim, distill_dim and data.image_size (the position embedding's
grid times the CNN's downsampling); GPT width, depth, vocab_size, num_classes, position and
num_tokens (learned positions; for rope_2d (args.image_size // args.downsample_size) ** 2 when
the file's args record them); a PatchGAN discriminator's ndf and n_layers.
The rest of the config comes from a recipe: `--recipe` (whose stated sizes must then equal the
file's), else the recipe with the file's sizes, else the closest one; `--config.<key>=<value>`
overrides (`overrides` here) change any key the file does not determine.

Heads. Packed q/k/v projections do not show the head count, so it comes, in this order, from
overrides (`model.enc_heads` / `model.dec_heads` / `model.heads`), what the file's saved `args`
record (a GPT's `gpt_model`, e.g. 'GPT-B'; a tokenizer's `model_config` yaml, e.g.
'configs/vq/VQ_SB256.yaml'; explicit head-count fields), an explicit `--recipe` (its sizes equal
the file's), or the reference's size tables when width and depth both match one of its sizes (the
only sizes the reference code builds). Otherwise the import stops with one line naming the flag to
pass; an override or --recipe that contradicts the file's record is refused too.

A tokenizer file without the semantic projector (`distill_mlp`, trained without the semantic loss)
imports with a freshly initialised one of the recipe's distill_dim and loss.semantic_weight = 0.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any, Mapping

import numpy as np

from gigatok_jax import config as config_lib
from gigatok_jax.config import overrides as overrides_lib
from gigatok_jax import fileio, runs
from gigatok_jax.convert import dino_discriminator as dino_disc_convert
from gigatok_jax.convert import gigatok
from gigatok_jax.convert import weight_files
from gigatok_jax.errors import CheckpointError
from gigatok_jax.models import layer_layout
from gigatok_jax.tree_names import flat_shapes, flatten, unflatten

TOKENIZER_RECIPES = ("tokenizer_ss", "tokenizer_sb", "tokenizer_bl", "tokenizer_xlxxl",
                     "tokenizer_ss_2d", "tokenizer_sb_2d", "tokenizer_bl_2d")
GPT_RECIPES = ("gpt_b", "gpt_l", "gpt_xl", "gpt_xxl")

# The sizes the reference code can build (width, layers, heads), by the names its configs and
# training arguments use: the tokenizer transformers' `encoder_size` / `decoder_size`
# (tokenizer/tokenizer_image/vq/blocks.py; checkpoint_layouts.md 1.2 lists small..xxl) and the
# GPTs' `--gpt-model` (autoregressive/models/gpt_1d.py; checkpoint_layouts.md 2).
REFERENCE_TOKENIZER_SIZES = {
    "tiny": (256, 4, 4), "small": (512, 6, 8), "base": (768, 12, 12), "large": (1024, 24, 16),
    "xl": (1280, 36, 20), "xxl": (1536, 48, 24), "xxxl": (2560, 48, 40),
}
REFERENCE_GPT_SIZES = {
    "GPT-B": (768, 12, 12), "GPT-L": (1024, 24, 16), "GPT-XL": (1280, 36, 20),
    "GPT-XXL": (1536, 48, 24), "GPT-XXXL": (2560, 48, 40), "GPT-1B": (2048, 22, 32),
    "GPT-3B": (3200, 24, 32), "GPT-7B": (4096, 32, 32),
}
# The released tokenizer configs (configs/vq/VQ_<enc><dec>256[_2d|_dino_disc|...].yaml): the
# letters name the encoder and decoder sizes.
_VQ_CONFIG = re.compile(r"^VQ_(SS|SB|BL|XLXXL)\d+")
_VQ_SIZES = {"SS": ("small", "small"), "SB": ("small", "base"), "BL": ("base", "large"),
             "XLXXL": ("xl", "xxl")}
# Head-count fields a saved `args` may carry (none of the reference's own scripts writes them).
_HEAD_FIELDS = {"model.enc_heads": ("enc_heads", "encoder_heads", "encoder_num_heads"),
                "model.dec_heads": ("dec_heads", "decoder_heads", "decoder_num_heads"),
                "model.heads": ("heads", "n_head", "num_heads")}
_SIDE = {"model.enc_heads": ("enc", "encoder"), "model.dec_heads": ("dec", "decoder"),
         "model.heads": ("", "")}
_API_HINT = "in Python: overrides={{{}}}"


# ------------------------------------------------------------------------------ sizes of a file
def _layer_count(sd: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return len({m.group(1) for k in sd if (m := pattern.match(k))})


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
  return tuple(int(n) for n in np.shape(sd[key]))


def kind_of(sd: Mapping[str, Any]) -> str:
  if "tok_embeddings.weight" in sd:
    return "gpt"
  if any(k.startswith(("s2to1encoder.", "s2dencoder.")) for k in sd):
    return "tokenizer"
  raise CheckpointError("the weights are neither a GigaTok tokenizer (no s2to1encoder.* / "
                        "s2dencoder.* keys) nor a GigaTok GPT (no tok_embeddings.weight); first "
                        f"keys: {sorted(sd)[:8]}")


def tokenizer_dims(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Every tokenizer size the shapes determine, as model keys (and `image_size` for
  data.image_size); `distill_dim` only when the file has the semantic projector."""
  one_d = "s2to1encoder.ln_post.weight" in sd
  enc, dec = ("s2to1encoder", "s1to2decoder") if one_d else ("s2dencoder", "s2ddecoder")
  out: dict[str, Any] = dict(kind="1d" if one_d else "2d")
  if not one_d:
    out["vit_layer_type"] = ("decoder" if f"{enc}.transformer.0.multihead_attn.in_proj_weight"
                             in sd else "plain")
  ratios = {}
  for side, prefix in (("enc", enc), ("dec", dec)):
    width = _shape(sd, f"{prefix}.ln_post.weight")[0]
    out[f"{side}_width"] = width
    out[f"{side}_layers"] = _layer_count(sd, f"{prefix}.transformer.")
    ratios[side] = _shape(sd, f"{prefix}.transformer.0.linear1.weight")[0] / width
  if ratios["enc"] != ratios["dec"]:
    raise CheckpointError(f"the encoder's MLP is {ratios['enc']:g}x its width but the decoder's "
                          f"{ratios['dec']:g}x; gigatok_jax has one model.mlp_ratio for both")
  out["mlp_ratio"] = float(ratios["enc"])
  ch = _shape(sd, "encoder.conv_in.weight")[0]
  mult = []
  for level in range(_layer_count(sd, "encoder.conv_blocks.")):
    cout = _shape(sd, f"encoder.conv_blocks.{level}.res.0.conv1.weight")[0]
    if cout % ch:
      raise CheckpointError(f"CNN level {level} has {cout} channels, not a multiple of the "
                            f"{ch} of encoder.conv_in")
    mult.append(cout // ch)
  out.update(cnn_ch=ch, cnn_ch_mult=tuple(mult),
             cnn_num_res_blocks=_layer_count(sd, "encoder.conv_blocks.0.res."),
             z_channels=_shape(sd, "encoder.conv_out.weight")[0])
  out["codebook_size"], out["code_dim"] = _shape(sd, "quantize.embedding.weight")
  if f"{dec}.distill_mlp.4.weight" in sd:
    out["distill_dim"] = _shape(sd, f"{dec}.distill_mlp.4.weight")[0]
  positions = _shape(sd, f"{enc}.positional_embedding")[0]
  grid = math.isqrt(positions)
  if grid * grid != positions:
    raise CheckpointError(f"{enc}.positional_embedding has {positions} positions, not a square "
                          "grid")
  out["image_size"] = grid * 2 ** (len(mult) - 1)
  if one_d:  # the latent queries' positions give the token count (0 = grid^2, the reference)
    n = _shape(sd, f"{enc}.latent_token_positional_embedding")[0]
    out["num_latent_tokens"] = 0 if n == positions else n
  return out


def gpt_dims(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Every GPT size the shapes determine (num_tokens only with learned positions); the FFN width
  must be the one the width implies (LlamaGen's rule, models/gpt.py:ffn_hidden)."""
  from gigatok_jax.models.gpt import ffn_hidden  # pylint: disable=import-outside-toplevel
  vocab, width = _shape(sd, "tok_embeddings.weight")
  out = dict(width=width, layers=_layer_count(sd, "layers."), vocab_size=vocab,
             num_classes=_shape(sd, "cls_embedding.embedding_table.weight")[0] - 1)
  if "positional_embedding" in sd:
    out.update(position="learned_1d", num_tokens=_shape(sd, "positional_embedding")[0] - 1)
  else:
    out["position"] = "rope_2d"
  if out["layers"]:
    hidden = _shape(sd, "layers.0.feed_forward.w1.weight")[0]
    if hidden != ffn_hidden(width):
      raise CheckpointError(f"the FFN is {hidden} wide but a {width}-wide GPT here has "
                            f"{ffn_hidden(width)} (int(8 * width / 3) rounded up to 256)")
  return out


def dims_of(sd: Mapping[str, Any], kind: str) -> dict[str, Any]:
  try:
    return tokenizer_dims(sd) if kind == "tokenizer" else gpt_dims(sd)
  except KeyError as e:
    raise CheckpointError(f"not a complete GigaTok {kind} state dict: no {e}") from None


def _config_key(name: str) -> str:
  return "data.image_size" if name == "image_size" else f"model.{name}"


# ------------------------------------------------------------------------------------- recipes
_MATCH_KEYS = {"tokenizer": ("kind", "enc_width", "enc_layers", "dec_width", "dec_layers"),
               "gpt": ("width", "layers")}


def _recipes(kind: str):
  for name in (TOKENIZER_RECIPES if kind == "tokenizer" else GPT_RECIPES):
    yield f"configs/{name}.py", config_lib.load_recipe(f"configs/{name}.py", key="--recipe")


def infer_recipe(sd: Mapping[str, Any]) -> str:
  """The recipe (configs/<name>.py) whose sizes the checkpoint has; a clear error if none."""
  kind = kind_of(sd)
  dims = dims_of(sd, kind)
  keys = _MATCH_KEYS[kind] + (("vit_layer_type",) if dims.get("kind") == "2d" else ())
  for spec, config in _recipes(kind):
    if all(config.model[k] == dims[k] for k in keys):
      return spec
  raise CheckpointError(f"no recipe has the sizes of this {kind} checkpoint ({dims}); pass "
                        "--recipe=configs/<recipe>.py[:variant] with matching sizes, or no "
                        "--recipe to take the sizes from the file")


def base_recipe(sd: Mapping[str, Any]) -> str:
  """The recipe a file without --recipe starts from: the one with its sizes, else the closest
  (most equal sizes; the first of equals) of the same kind (and 2D layer type)."""
  kind = kind_of(sd)
  dims = dims_of(sd, kind)
  best, best_score = "", -1
  for spec, config in _recipes(kind):
    m = config.model
    if kind == "tokenizer" and (m.kind != dims["kind"] or (
        dims["kind"] == "2d" and m.vit_layer_type != dims["vit_layer_type"])):
      continue
    score = sum(overrides_lib.get_key(config, _config_key(k)) == v for k, v in dims.items())
    if all(m[k] == dims[k] for k in _MATCH_KEYS[kind]):
      return spec
    if score > best_score:
      best, best_score = spec, score
  return best


# -------------------------------------------------------------------------------------- heads
def _fields(args: Any) -> dict[str, Any]:
  if isinstance(args, argparse.Namespace):
    return dict(vars(args))
  return dict(args) if isinstance(args, Mapping) else {}


def recorded_heads(args: Any, kind: str, dims: Mapping[str, Any], log=print
                   ) -> dict[str, tuple[int, str]]:
  """{head key: (heads, what in the file says so)} from a checkpoint's saved `args`, for the
  records that fit the weights (a named size with the file's width and depth, or a count that
  divides the width); a record that does not fit is reported and not used."""
  fields = _fields(args)
  found: dict[str, list[tuple[int, str]]] = {}

  def size(key, table, name, source):
    width, layers = dims[f"{_SIDE[key][0]}_width" if kind == "tokenizer" else "width"], \
        dims[f"{_SIDE[key][0]}_layers" if kind == "tokenizer" else "layers"]
    if name not in table:
      return
    w, l, h = table[name]
    if (w, l) == (width, layers):
      found.setdefault(key, []).append((h, source))
    else:
      log(f"note: the file's {source} means {w} wide x {l} layers, but the weights are {width} "
          f"x {layers}; not used for the head count")

  if kind == "gpt":
    name = fields.get("gpt_model")
    if isinstance(name, str):
      size("model.heads", REFERENCE_GPT_SIZES, name, f"args.gpt_model={name!r}")
  else:
    config_path = fields.get("model_config")
    if isinstance(config_path, str):
      stem = os.path.splitext(os.path.basename(config_path))[0]
      if (m := _VQ_CONFIG.match(stem)):
        for key, name in zip(("model.enc_heads", "model.dec_heads"), _VQ_SIZES[m.group(1)]):
          size(key, REFERENCE_TOKENIZER_SIZES, name, f"args.model_config={config_path!r}")
    for key, field in (("model.enc_heads", "encoder_size"), ("model.dec_heads", "decoder_size")):
      for f in (field, "model_size"):
        if isinstance(fields.get(f), str):
          size(key, REFERENCE_TOKENIZER_SIZES, fields[f], f"args.{f}={fields[f]!r}")
          break
  for key, names in _HEAD_FIELDS.items():
    if (key == "model.heads") != (kind == "gpt"):
      continue
    width = dims[f"{_SIDE[key][0]}_width" if kind == "tokenizer" else "width"]
    for f in names:
      value = fields.get(f)
      if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value > 0 and width % value == 0:
          found.setdefault(key, []).append((int(value), f"args.{f}={int(value)}"))
        else:
          log(f"note: the file's args.{f}={value} does not divide the width {width}; not used")
  out = {}
  for key, records in found.items():
    if len({h for h, _ in records}) > 1:
      log(f"note: the file's args disagree on {key}: "
          + ", ".join(f"{s} ({h})" for h, s in records) + f"; using {records[0][1]}")
    out[key] = records[0]
  return out


def _official_heads(kind: str, width: int, layers: int) -> tuple[int, str] | None:
  table = REFERENCE_TOKENIZER_SIZES if kind == "tokenizer" else REFERENCE_GPT_SIZES
  for name, (w, l, h) in table.items():
    if (w, l) == (width, layers):
      return h, f"the reference's size {name!r}"
  return None


def resolve_heads(config, kind: str, dims: Mapping[str, Any], *, overrides: Mapping[str, Any],
                  records: Mapping[str, tuple[int, str]], recipe: str, what: str
                  ) -> dict[str, str]:
  """Sets the head counts on `config` (see the module docstring for the order); returns
  {key: source}. One-line CheckpointErrors for unknown or contradicted counts."""
  keys = ("model.enc_heads", "model.dec_heads") if kind == "tokenizer" else ("model.heads",)
  sources, missing = {}, []
  for key in keys:
    side, side_name = _SIDE[key]
    width = dims[f"{side}_width" if side else "width"]
    layers = dims[f"{side}_layers" if side else "layers"]
    record = records.get(key)
    if key in overrides:
      value, source = overrides[key], f"--config.{key}"
      if record and record[0] != value:
        raise CheckpointError(f"{what}: --config.{key}={value} contradicts the file's "
                              f"{record[1]} ({record[0]} heads); drop the flag or make it "
                              f"{record[0]}")
    elif record:
      value, source = record
      if recipe and overrides_lib.get_key(config, key) != value:
        raise CheckpointError(f"{what}: --recipe={recipe} has {key.split('.')[1]}="
                              f"{overrides_lib.get_key(config, key)} but the file's {record[1]} means {value} "
                              f"heads; pass --config.{key}={value} or another recipe")
    elif recipe:
      value, source = overrides_lib.get_key(config, key), f"--recipe={recipe}"
    elif (official := _official_heads(kind, width, layers)):
      value, source = official
    else:
      label = f"{side_name} width {width}" if side else f"width {width}"
      missing.append((key, f"{label} x {layers} layers"))
      continue
    if not isinstance(value, int) or value <= 0 or width % value:
      raise CheckpointError(f"{what}: {value} heads (from {source}) do not divide the "
                            f"{side_name + ' ' if side else ''}width {width}; pass "
                            f"--config.{key}=N with N dividing {width}")
    overrides_lib.set_key(config, key, value)
    sources[key] = f"{value} from {source}"
  if missing:
    sizes = " and ".join(label for _, label in missing)
    verb = "matches" if len(missing) == 1 else "match"
    flags = " ".join(f"--config.{key}=N" for key, _ in missing)
    api = ", ".join(f"'{key}': N" for key, _ in missing)
    raise CheckpointError(f"{what}: {sizes} {verb} no official {'GPT ' if kind == 'gpt' else ''}"
                          f"size and the file records no head count; pass {flags} "
                          f"({_API_HINT.format(api)})")
  return sources


# -------------------------------------------------------------------------------- configuring
# Sizes the file sets even against an explicit --recipe (its positions, classes, token count).
_FILE_KEYS = {"gpt": ("vocab_size", "num_classes", "position", "num_tokens"),
              "tokenizer": ("num_latent_tokens",)}


def configure(recipe: str, sd: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
              args: Any = None, *, what: str = "the checkpoint", log=print):
  """The config of the weights `sd`: `recipe` ('' = base_recipe) with the file's sizes, the
  overrides and settled head counts (see the module docstring). With an explicit `recipe` the
  sizes it states must be the file's (a GPT's vocabulary, classes and positions and a
  tokenizer's token count excepted: the file sets those)."""
  return settle(recipe, sd, overrides, args, what=what, log=log)[0]


# Architecture options with no weights of their own whose reference values an official file implies.
REFERENCE_ARCHITECTURE = {"model.cnn_norm_groups": 32, "model.dec_query_init": "first_token",
                          "model.quantizer": "vq", "model.fsq_levels": (),
                          "model.nested_dropout": ()}


def settle(recipe: str, sd: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
           args: Any = None, *, what: str = "the checkpoint", log=print):
  """`configure`, returning (config, the recipe started from, {head key: where it came from})."""
  kind = kind_of(sd)
  dims = dims_of(sd, kind)
  spec = recipe or base_recipe(sd)
  config = config_lib.load_recipe(spec, key="--recipe")
  if config.task != kind:
    raise CheckpointError(f"--recipe={recipe} is a {config.task} recipe but the weights are a "
                          f"{kind}")
  parsed = overrides_lib.apply_overrides(config, overrides)
  conflicts = [f"--config.{_config_key(k)}={parsed[_config_key(k)]!r} vs the file's {v!r}"
               for k, v in dims.items()
               if _config_key(k) in parsed and parsed[_config_key(k)] != v]
  if conflicts:
    raise CheckpointError(f"{what}: the weights fix these sizes: " + ", ".join(conflicts))
  if recipe:
    mismatch = {k: (v, overrides_lib.get_key(config, _config_key(k))) for k, v in dims.items()
                if k not in _FILE_KEYS[kind] and overrides_lib.get_key(config, _config_key(k)) != v}
    if mismatch:
      inferred = ""
      try:
        inferred = f" (the checkpoint matches {infer_recipe(sd)})"
      except CheckpointError:
        pass
      raise CheckpointError(f"--recipe={recipe} does not match the checkpoint{inferred}: "
                            + ", ".join(f"{k} checkpoint {a} vs recipe {b}"
                                        for k, (a, b) in mismatch.items())
                            + "; leave --recipe out to take the sizes from the file")
  for k, v in dims.items():
    overrides_lib.set_key(config, _config_key(k), v)
  if kind == "tokenizer":
    # Official weights were trained with the reference architecture: whatever the recipe chose
    # (configs/demo.py: 8 GroupNorm groups, 'unpool' decoder queries) gives way to it.
    for key, value in REFERENCE_ARCHITECTURE.items():
      if key not in parsed:
        overrides_lib.set_key(config, key, value)
  fields = _fields(args)
  if kind == "gpt" and dims["position"] == "rope_2d" and "model.num_tokens" not in parsed:
    size, down = fields.get("image_size"), fields.get("downsample_size")
    if all(isinstance(x, (int, np.integer)) and x > 0 for x in (size, down)) and size % down == 0:
      config.model.num_tokens = int(size // down) ** 2
  if kind == "tokenizer" and "distill_dim" not in dims:
    if "loss.semantic_weight" not in parsed:
      config.loss.semantic_weight = 0.0
    log(f"note: {what} has no semantic projector (distill_mlp); it gets a fresh one of "
        f"distill_dim {config.model.distill_dim}, and loss.semantic_weight is "
        f"{config.loss.semantic_weight}")
  records = recorded_heads(args, kind, dims, log=log)
  heads = resolve_heads(config, kind, dims, overrides=parsed, records=records, recipe=recipe,
                        what=what)
  _check(config)
  return config, spec, heads


def _check(config) -> None:
  """The schema's model checks on the final config (one-line ConfigErrors naming the key)."""
  from gigatok_jax.config import validate  # pylint: disable=import-outside-toplevel
  if config.task == "gpt":
    validate.check_gpt_model(config.model)
  else:
    validate.check_model(config.model, config.data.image_size)


def _fresh_projector(sd: dict[str, Any], config) -> None:
  """Adds a torch-default-initialised semantic projector to a tokenizer state dict without one."""
  dec = "s1to2decoder" if config.model.kind == "1d" else "s2ddecoder"
  width, dim = config.model.dec_width, config.model.distill_dim
  rng = np.random.default_rng(0)
  for index, (cin, cout) in zip((0, 2, 4), ((width, 4 * width), (4 * width, 4 * width),
                                            (4 * width, dim))):
    bound = 1.0 / math.sqrt(cin)
    sd[f"{dec}.distill_mlp.{index}.weight"] = rng.uniform(-bound, bound, (cout, cin)).astype(
        np.float32)
    sd[f"{dec}.distill_mlp.{index}.bias"] = rng.uniform(-bound, bound, (cout,)).astype(np.float32)


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


def _patchgan_sizes(disc_sd: Mapping[str, Any]) -> dict[str, int]:
  """ndf and n_layers of a reference PatchGAN state dict (`main.{idx}` convs, layouts 1.1)."""
  convs = [k for k in disc_sd if re.fullmatch(r"main\.\d+\.weight", k)
           and len(np.shape(disc_sd[k])) == 4]
  return dict(ndf=_shape(disc_sd, "main.0.weight")[0], n_layers=len(convs) - 2)


def import_checkpoint(src: str, out: str, *, weights: str = "auto", recipe: str = "",
                      overrides: Mapping[str, Any] | None = None, tokenizer_workdir: str = "",
                      log=print) -> str:
  """Converts a released tokenizer or GPT file into run directory `out`; returns `out`.

  `recipe` ('' = the one with the file's sizes, else the closest) gives what the file does not
  determine, `overrides` ({'model.enc_heads': 10, ...}, values or their text) change it; the head
  counts must be settled (module docstring) or a one-line CheckpointError says which key to set.
  """
  raw = weight_files.read_checkpoint(src)
  sd, picked = pick_weights(raw, weights, src)
  sd = dict(gigatok.upgrade_legacy_keys(sd))            # files of our exports before issue 23
  kind = kind_of(sd)
  name = os.path.basename(src)
  config, recipe_used, heads = settle(recipe, sd, overrides, raw.get("args"), what=name, log=log)
  steps = raw.get("steps", 0)
  info = dict(source=os.path.abspath(src), source_sha256=fileio.sha256_file(src), weights=picked,
              recipe=recipe_used, recipe_given=bool(recipe), kind=kind,
              overrides=overrides_lib.overrides_record(overrides), heads=heads,
              source_steps=int(steps) if isinstance(steps, (int, np.integer)) else 0)
  disc_sd = raw.get("discriminator")
  patchgan = kind == "tokenizer" and isinstance(disc_sd, Mapping) and "main.0.weight" in disc_sd
  dino_disc = (kind == "tokenizer" and isinstance(disc_sd, Mapping)
               and "heads.0.0.0.weight_orig" in disc_sd)
  if patchgan:
    config.discriminator.update(_patchgan_sizes(disc_sd))
  if dino_disc:
    config.discriminator.update(_dino_disc_sizes(disc_sd))
    if not recipe:   # the released VQ_BL256_dino_disc.yaml's other difference from VQ_BL256.yaml
      config.loss.disc_start_step = 80_000
  if kind == "tokenizer" and not any(".distill_mlp." in k for k in sd):
    _fresh_projector(sd, config)
  if kind == "tokenizer":
    gen, disc, stats = gigatok.abstract_tokenizer(config)
    gen_flat = gigatok.from_torch(gigatok.tokenizer_rules(flat_shapes(gen)), sd,
                                  f"{src} [{picked}]", extra=dict([gigatok.CODEBOOK_USED]))
    if layer_layout.is_scanned(flat_shapes(gen)):                 # model.scan_layers
      gen_flat = layer_layout.to_scanned(gen_flat)
    trees = {"gen_params": unflatten(gen_flat, gen)}
    if patchgan:
      rules = gigatok.discriminator_rules(flat_shapes(disc), flat_shapes(stats))
      flat = gigatok.from_torch(rules, raw["discriminator"], f"{src} [discriminator]")
      trees["disc_params"] = unflatten({k: v for k, v in flat.items()
                                        if not k.startswith("stats:")}, disc)
      trees["disc_stats"] = unflatten({k[len("stats:"):]: v for k, v in flat.items()
                                       if k.startswith("stats:")}, stats)
    elif dino_disc:
      params, spectral = dino_disc_convert.heads_from_torch(
          weight_files.tensor_to_numpy(disc_sd), f"{src} [discriminator]")
      trees["disc_params"], trees["disc_stats"] = unflatten(params, disc), unflatten(spectral, stats)
      log(f"note: {src} has the DINO discriminator; its heads are imported, and training from these "
          "weights needs the DINO ViT-S/16 backbone file (teachers.dino_disc_path)")
    elif disc_sd is not None:
      log(f"note: {src} has a discriminator of an unknown kind; it is not imported, and training "
          "from these weights starts a fresh PatchGAN")
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
  heads_text = ", ".join(f"{k.split('.')[1]} {v}" for k, v in heads.items())
  log(f"converted {kind} {src} ({picked} weights, {n:,} parameters, recipe {recipe_used} with the "
      f"file's sizes; heads: {heads_text}) -> {out}")
  return out


def _dino_disc_sizes(disc_sd: Mapping) -> dict:
  """discriminator.kind / depth / kernel_size of an official DinoDisc state dict (its heads)."""
  heads = len({k.split(".")[1] for k in disc_sd if k.startswith("heads.")})
  depths = [d + 1 for d in dino_disc_convert.dd.KEY_DEPTHS]       # the depth that keeps n readouts
  if not 2 <= heads <= len(depths) + 1:
    raise CheckpointError(f"DINO discriminator with {heads} heads: expected 2..{len(depths) + 1}")
  kernel = np.shape(disc_sd["heads.0.1.fn.0.weight_orig"])[-1]
  return {"kind": "dinodisc", "depth": depths[heads - 2], "kernel_size": int(kernel)}


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
  if config.task == "tokenizer":
    for key, value in REFERENCE_ARCHITECTURE.items():
      ours = config.model.get(key.split(".", 1)[1], value)   # runs older than the key: reference
      ours = tuple(ours) if isinstance(ours, list) else ours  # config.json stores tuples as lists
      if ours != value:
        raise CheckpointError(f"--src={workdir}: {key}={ours!r} has no counterpart in the "
                              f"reference code (it has {value!r}); the exported weights would "
                              "compute something else there")
    from gigatok_jax.models.tokenizer import grid_size  # pylint: disable=import-outside-toplevel
    n = config.model.get("num_latent_tokens", 0)
    if n and n != grid_size(config.model, config.data.image_size) ** 2:
      raise CheckpointError(f"--src={workdir}: model.num_latent_tokens={n} has no counterpart in "
                            "the reference code (one token per grid cell)")
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
