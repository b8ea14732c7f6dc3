"""Config validation, run before anything is compiled.

Every problem raises `ConfigError` naming the dotted key; `main.py` prints it as one line and exits
non-zero. The schemas are `config.tokenizer_config()` and `config.gpt_config()`: a recipe (or a
user's own config file) may only use their keys, with values of compatible types.
"""

from __future__ import annotations

import difflib
import math

import jax
import ml_collections
import numpy as np

from gigatok_jax import fileio, parallel
from gigatok_jax.config import gpt as gpt_schema
from gigatok_jax.config import tokenizer as tokenizer_schema
from gigatok_jax.data import pipeline
from gigatok_jax.errors import ConfigError, DataError, UserError
from gigatok_jax.models.layers import REMAT_POLICIES
from gigatok_jax.models.qformer import max_latent_tokens
from gigatok_jax.models.quantizer import QUANTIZERS


def _type_ok(expected, value) -> bool:
  if isinstance(expected, bool):
    return isinstance(value, bool)
  if isinstance(expected, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(expected, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(expected, (tuple, list)):
    return isinstance(value, (tuple, list))
  if isinstance(expected, str):
    return isinstance(value, str)
  return True


def check_schema(config, schema, prefix: str = "") -> None:
  """Unknown keys and wrong types, recursively."""
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
      raise ConfigError(name, f"unknown key{hint}")
    value, expected = config[key], schema[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(name, f"must be a group of keys, got {type(value).__name__}")
      check_schema(value, expected, name + ".")
    elif not _type_ok(expected, value):
      raise ConfigError(name, f"must be of type {type(expected).__name__}, got {value!r} "
                        f"({type(value).__name__})")
  missing = [k for k in schema.keys() if k not in config]
  if missing:
    raise ConfigError(f"{prefix}{missing[0]}", "missing (every recipe starts from "
                      "config.tokenizer_config() or config.gpt_config(), which sets it)")


def _positive(config, key: str) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  if value <= 0:
    raise ConfigError(key, f"must be positive, got {value!r}")


def check_model(m, image_size: int) -> None:
  if m.kind not in ("1d", "2d"):
    raise ConfigError("model.kind", f"must be '1d' or '2d', got {m.kind!r}")
  if m.kind == "2d" and m.vit_layer_type not in ("plain", "decoder"):
    raise ConfigError("model.vit_layer_type", f"must be 'plain' or 'decoder', got {m.vit_layer_type!r}")
  for side in ("enc", "dec"):
    w, h = m[f"{side}_width"], m[f"{side}_heads"]
    if w <= 0 or h <= 0 or w % h:
      raise ConfigError(f"model.{side}_width", f"{w} must be a positive multiple of {side}_heads={h}")
    if m[f"{side}_layers"] <= 0:
      raise ConfigError(f"model.{side}_layers", "must be positive")
  if not 1 <= m.distill_depth <= m.dec_layers:
    raise ConfigError("model.distill_depth", f"must be in [1, dec_layers={m.dec_layers}], got "
                      f"{m.distill_depth}")
  query_init = m.get("dec_query_init", "first_token")
  if query_init not in ("first_token", "unpool"):
    raise ConfigError("model.dec_query_init", f"must be 'first_token' or 'unpool', got {query_init!r}")
  if query_init != "first_token" and m.kind != "1d":
    raise ConfigError("model.dec_query_init", f"{query_init!r} is for the 1d (Q-Former) decoder only")
  groups = m.get("cnn_norm_groups", 32)
  if not isinstance(groups, int) or groups <= 0:
    raise ConfigError("model.cnn_norm_groups", f"must be a positive int, got {groups!r}")
  for ch in [m.cnn_ch * k for k in m.cnn_ch_mult] + [m.z_channels]:
    if ch % groups:
      raise ConfigError("model.cnn_ch", f"CNN channel count {ch} is not a multiple of the {groups} "
                        "GroupNorm groups (cnn_ch * cnn_ch_mult and z_channels must be)")
  factor = 2 ** (len(m.cnn_ch_mult) - 1)
  grid = image_size // factor
  if image_size % factor or grid < 2 or grid & (grid - 1):
    raise ConfigError("data.image_size", f"{image_size} / {factor} (the CNN downsampling of "
                      f"{len(m.cnn_ch_mult)} levels) must be a power-of-two grid >= 2")
  n = m.get("num_latent_tokens", 0)
  if not isinstance(n, int) or n < 0:
    raise ConfigError("model.num_latent_tokens", f"must be an int >= 0 (0 = grid^2), got {n!r}")
  if n and m.kind != "1d" and n != grid * grid:
    raise ConfigError("model.num_latent_tokens", f"is {n}, but a 2d tokenizer has one token per "
                      f"grid cell ({grid * grid}); set it to 0")
  if n > max_latent_tokens(grid, grid):
    raise ConfigError("model.num_latent_tokens", f"is {n}; multi-level pooling of the {grid} x "
                      f"{grid} grid gives at most {max_latent_tokens(grid, grid)} tokens (1 + 1 + "
                      f"2 + ... + {grid * grid})")
  for key in ("dtype", "param_dtype"):
    if m[key] not in ("float32", "bfloat16"):
      raise ConfigError(f"model.{key}", f"must be 'float32' or 'bfloat16', got {m[key]!r}")
  if m.remat not in REMAT_POLICIES:
    raise ConfigError("model.remat", f"must be one of {REMAT_POLICIES}, got {m.remat!r}")
  if m.codebook_size <= 1 or m.code_dim <= 0:
    raise ConfigError("model.codebook_size", "codebook_size must be > 1 and code_dim > 0")
  check_quantizer(m)


def check_nested_dropout(m, num_tokens: int, eval_tokens: int = 0) -> None:
  lengths = tuple(m.get("nested_dropout", ()) or ())
  if eval_tokens and eval_tokens != num_tokens:
    if not lengths:
      raise ConfigError("eval.num_tokens", f"is {eval_tokens}, but only a tokenizer trained with "
                        f"model.nested_dropout decodes from fewer than its {num_tokens} tokens")
    if not 1 <= eval_tokens <= num_tokens:
      raise ConfigError("eval.num_tokens", f"must be in 1..{num_tokens}, got {eval_tokens}")
  if not lengths:
    return
  if m.kind != "1d":
    raise ConfigError("model.nested_dropout", "needs a 1d tokenizer (model.kind='1d')")
  if (any(not isinstance(k, int) or not 1 <= k <= num_tokens for k in lengths)
      or list(lengths) != sorted(set(lengths))):
    raise ConfigError("model.nested_dropout", f"must be increasing token counts in [1, "
                      f"{num_tokens}] (the tokens per image), got {lengths!r}")


def check_quantizer(m) -> None:
  """model.quantizer and, for 'fsq', its levels against code_dim and codebook_size."""
  kind = m.get("quantizer", "vq")
  if kind not in QUANTIZERS:
    raise ConfigError("model.quantizer", f"must be one of {QUANTIZERS}, got {kind!r}")
  levels = tuple(m.get("fsq_levels", ()) or ())
  if kind != "fsq":
    if levels:
      raise ConfigError("model.fsq_levels", f"is set but model.quantizer is {kind!r}; "
                        "set model.quantizer='fsq' or fsq_levels=()")
    return
  # Two levels leave no room: the even-level half-step shift atanh(0.5 / 0.4995) is undefined.
  if not levels or any(not isinstance(l, int) or l < 3 for l in levels):
    raise ConfigError("model.fsq_levels", f"must be a tuple of ints >= 3 (e.g. (8, 8, 8, 5, 5, 5)), "
                      f"got {levels!r}")
  if m.code_dim != len(levels):
    raise ConfigError("model.code_dim", f"is {m.code_dim}, but FSQ has one channel per level: "
                      f"set it to {len(levels)} (len(model.fsq_levels))")
  if m.codebook_size != math.prod(levels):
    raise ConfigError("model.codebook_size", f"is {m.codebook_size}, but FSQ levels {levels} "
                      f"give {math.prod(levels)} codes: set it to that")


def check_losses(loss) -> None:
  for key in ("reconstruction_weight", "codebook_weight", "entropy_weight", "disc_weight",
              "perceptual_weight", "semantic_weight"):
    if loss[key] < 0:
      raise ConfigError(f"loss.{key}", f"must be >= 0, got {loss[key]}")
  if loss.aux_loss_end < 0:
    raise ConfigError("loss.aux_loss_end", "must be >= 0 (0 turns the auxiliary losses off)")
  if loss.feature_rec_weight < 0:
    raise ConfigError("loss.feature_rec_weight", "must be >= 0")
  if loss.disc_start_step < 0:
    raise ConfigError("loss.disc_start_step", "must be >= 0")


def check_inference_dtype(config) -> None:
  from gigatok_jax.inference import INFERENCE_DTYPES  # pylint: disable=import-outside-toplevel
  if config.inference_dtype not in INFERENCE_DTYPES:
    raise ConfigError("inference_dtype", f"must be one of {INFERENCE_DTYPES}, got "
                      f"{config.inference_dtype!r}")


def check_distributed(d) -> None:
  if d.num_processes == 0 or d.num_processes < -1:
    raise ConfigError("distributed.num_processes", f"must be positive or -1, got {d.num_processes}")
  if d.process_id < -1 or (d.num_processes > 0 and d.process_id >= d.num_processes):
    raise ConfigError("distributed.process_id", f"must be -1 or in [0, num_processes), got "
                      f"{d.process_id}")
  if d.coordinator_address and ":" not in d.coordinator_address:
    raise ConfigError("distributed.coordinator_address",
                      f"must be 'host:port', got {d.coordinator_address!r}")
  for key in ("initialization_timeout_s", "heartbeat_timeout_s"):
    if d[key] < 1:
      raise ConfigError(f"distributed.{key}", f"must be >= 1 second, got {d[key]}")


# ------------------------------------------------------------------------- data and teachers

def check_data_config(data_cfg, global_batch_size: int, *, splits=pipeline.SPLITS,
                      process_count: int | None = None,
                      batch_size_key: str = "global_batch_size") -> dict[str, int]:
  """Checks the data config before anything is compiled; returns {split: number of records}.

  Opens each split in `splits` (cheap: shard footers / tfds metadata, plus one decoded record) so
  that a wrong path fails now with a `ConfigError` naming the key. `batch_size_key` names the config key
  that holds `global_batch_size`, for the error message.
  """
  source = pipeline.data_value(data_cfg, "source")
  if source not in pipeline.SOURCES:
    raise ConfigError("data.source", f"must be one of {pipeline.SOURCES}, got {source!r}")
  size = pipeline.data_value(data_cfg, "image_size")
  if not pipeline.is_int(size) or size <= 0 or size % 16:
    raise ConfigError("data.image_size", f"must be a positive multiple of 16, got {size!r}")
  scale = pipeline.data_value(data_cfg, "crop_max_scale")
  if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 1.0 <= scale <= 4.0:
    raise ConfigError("data.crop_max_scale", f"must be a number in [1, 4], got {scale!r}")
  flip = pipeline.data_value(data_cfg, "random_flip")
  if not isinstance(flip, (bool, np.bool_)):
    raise ConfigError("data.random_flip", f"must be a bool, got {flip!r}")
  for key, low in (("worker_count", 0), ("read_threads", 1), ("demo_num_samples", 1)):
    value = pipeline.data_value(data_cfg, key)
    if not pipeline.is_int(value) or value < low:
      raise ConfigError(f"data.{key}", f"must be an int >= {low}, got {value!r}")
  if process_count is None:
    _, process_count = pipeline.process_info(None, None)
  if not pipeline.is_int(global_batch_size) or global_batch_size <= 0:
    raise ConfigError(batch_size_key, f"must be a positive int, got {global_batch_size!r}")
  if global_batch_size % process_count:
    raise ConfigError(batch_size_key, f"{global_batch_size} is not divisible by the number of "
                      f"processes ({process_count})")
  sizes = {}
  for split in splits:
    src = pipeline.make_source(data_cfg, split)
    key = {"array_record": f"data.{split}_path",
           "tfds": f"data.tfds_{split}_split"}.get(source, "data.source")
    if len(src) == 0:
      raise ConfigError(key, f"the {split} split is empty")
    try:
      _ = src[0]
    except DataError as e:
      raise ConfigError(key, f"the first {split} record cannot be read: {e}") from None
    sizes[split] = len(src)
  return sizes


def check_teachers_config(config) -> None:
  """Before compilation: every active teacher has a readable converted file that fits."""
  import json  # pylint: disable=import-outside-toplevel
  from gigatok_jax.convert import weight_files  # pylint: disable=import-outside-toplevel
  from gigatok_jax.models import dinov2  # pylint: disable=import-outside-toplevel
  from gigatok_jax.train import teachers  # pylint: disable=import-outside-toplevel
  for name in teachers.active(config):
    path = config.teachers[name + "_path"]
    key, weight, hint = teachers.PATH_KEY[name], teachers.WEIGHT_KEY[name], teachers.CONVERT_HINT[name]
    if not path:
      raise ConfigError(key, f"{weight}={config.loss[weight.split('.')[1]]} "
                        f"needs converted {name} weights: run `{hint}` and set "
                        f"--config.{key}=<file>, or set --config.{weight}=0")
    try:
      meta = weight_files.read_metadata(path)
    except UserError as e:
      raise ConfigError(key, f"{e}. Convert the original weights with `{hint}`") from e
    if meta.get("model") != teachers.MODEL_NAME[name]:
      raise ConfigError(key, f"{path} holds '{meta.get('model')}' weights, expected "
                        f"'{teachers.MODEL_NAME[name]}' (convert with `{hint}`)")
    if name == "dinov2":
      width = dinov2.DinoV2Config(**json.loads(meta["config"])).width
      if width != config.model.distill_dim:
        raise ConfigError("model.distill_dim", f"is {config.model.distill_dim} but the DINOv2 "
                          f"teacher in {path} has width {width}; they must be equal")


def check_batch_divisible(config, n: int | None, key: str = "global_batch_size") -> None:
  """`key`'s batch size must split evenly over the data-parallel devices of the configured mesh."""
  n = n if n is not None else jax.device_count()
  shape = dict(zip(parallel.MESH_AXES, parallel.mesh_shape(config.mesh, n)))
  rules = tuple(tuple(r) for r in config.mesh.axis_rules)
  spec = parallel.logical_to_spec(("batch",), rules)[0]
  axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
  dp = math.prod(shape[a] for a in axes)
  value = config
  for part in key.split("."):
    value = value[part]
  if value % dp:
    raise ConfigError(key, f"{value} is not divisible by the {dp} data-parallel devices "
                      f"(mesh {shape}, batch over {axes})")


def check_gpt_model(m) -> None:
  if m.width <= 0 or m.heads <= 0 or m.width % m.heads or (m.width // m.heads) % 2:
    raise ConfigError("model.width", f"{m.width} must be a positive multiple of heads={m.heads} "
                      "with an even head size")
  for key in ("layers", "vocab_size", "num_tokens", "num_classes"):
    if m[key] <= 0:
      raise ConfigError(f"model.{key}", f"must be positive, got {m[key]}")
  if m.position not in ("learned_1d", "rope_2d"):
    raise ConfigError("model.position", f"must be 'learned_1d' or 'rope_2d', got {m.position!r}")
  if m.position == "rope_2d" and (math.isqrt(m.num_tokens) ** 2 != m.num_tokens
                                  or (m.width // m.heads) % 4):
    raise ConfigError("model.position", "'rope_2d' needs a square num_tokens and a head size "
                      "divisible by 4")
  from gigatok_jax.models.gpt import ATTENTION  # pylint: disable=import-outside-toplevel
  if m.attention not in ATTENTION:
    raise ConfigError("model.attention", f"must be one of {ATTENTION}, got {m.attention!r}")
  for key in ("class_dropout", "token_dropout", "resid_dropout", "ffn_dropout"):
    if not 0.0 <= m[key] < 1.0:
      raise ConfigError(f"model.{key}", f"must be in [0, 1), got {m[key]}")
  for key in ("dtype", "param_dtype"):
    if m[key] not in ("float32", "bfloat16"):
      raise ConfigError(f"model.{key}", f"must be 'float32' or 'bfloat16', got {m[key]!r}")
  if m.remat not in REMAT_POLICIES:
    raise ConfigError("model.remat", f"must be one of {REMAT_POLICIES}, got {m.remat!r}")


def check_init_from(config) -> None:
  """`init_from` must name converted weights of the same kind of model (pretrained.py)."""
  if not config.init_from:
    return
  from gigatok_jax import runs
  from gigatok_jax.errors import CheckpointError
  try:
    path = runs.find_imported("", config.init_from)
    kind = runs.read_imported_info(path).get("kind")
  except CheckpointError as e:
    raise ConfigError("init_from", str(e)) from None
  if kind != config.task:
    raise ConfigError("init_from", f"{path} holds {kind} weights, but this is a {config.task} "
                      "recipe")


def check_sampling(config) -> None:
  """The sampling settings every GPT recipe carries (also written into samples_*.json)."""
  sc = config.sample
  if not 0 <= sc.top_k <= config.model.vocab_size:
    raise ConfigError("sample.top_k", f"must be in [0, vocab_size={config.model.vocab_size}]")
  if not 0.0 <= sc.cfg_step_fraction <= 1.0:
    raise ConfigError("sample.cfg_step_fraction", f"must be in [0, 1], got {sc.cfg_step_fraction}")
  if sc.cfg_scale < 0 or sc.temperature < 0 or not 0.0 < sc.top_p <= 1.0:
    raise ConfigError("sample", "cfg_scale and temperature must be >= 0 and top_p in (0, 1]")


def check_sample(config, num_devices: int | None = None) -> None:
  """--mode=sample: the sampler's own argument check, sample counts, classes, batch over the mesh."""
  from gigatok_jax.models.sampler import SamplingSettings  # pylint: disable=import-outside-toplevel
  s = config.sample
  try:
    SamplingSettings.from_config(s).check()
  except ValueError as e:
    raise ConfigError("sample", str(e)) from None
  if s.num_samples <= 0 or s.batch_size <= 0:
    raise ConfigError("sample.num_samples", "num_samples and batch_size must be positive")
  num_classes = config.model.num_classes
  classes = list(s.classes)
  if classes and (min(classes) < 0 or max(classes) >= num_classes):
    raise ConfigError("sample.classes", f"class ids must be in [0, {num_classes}), got "
                      f"{list(s.classes)}")
  check_batch_divisible(config, num_devices, "sample.batch_size")


def check_extract(config) -> None:
  """--mode=extract_codes: views per image, batch, split."""
  e = config.extract
  augments = gpt_schema.EXTRACT_VIEWS
  if e.augment not in augments:
    raise ConfigError("extract.augment", f"must be one of {tuple(augments)}, got {e.augment!r}")
  if e.batch_size < augments[e.augment]:
    raise ConfigError("extract.batch_size", f"{e.batch_size} is smaller than the "
                      f"{augments[e.augment]} views per image of augment={e.augment!r}")
  if e.split not in pipeline.SPLITS:
    raise ConfigError("extract.split", f"must be one of {pipeline.SPLITS}, got {e.split!r}")


def check_probe(config) -> None:
  """--mode=probe: validation codes and the probed layer."""
  if not config.data.eval_codes_path:
    raise ConfigError("data.eval_codes_path", "linear probing needs validation codes "
                      "(--mode=extract_codes --config.extract.split=eval)")
  layer = config.probe.layer or config.model.layers // 2
  if not 1 <= layer <= config.model.layers:
    raise ConfigError("probe.layer", f"must be in [1, {config.model.layers}] (0 = half), got {layer}")


def check_file(key: str, path: str, *, local: bool = False) -> None:
  """`path` (config key `key`) must be a file, local or gs:// (fileio); `local`: a converted weight
  file, which the converters' readers take from local disks only."""
  if local and fileio.is_remote(path):
    raise ConfigError(key, f"{path}: converted weight files are read from local disks only; copy "
                      "it to this machine first")
  if not fileio.isfile(path):
    raise ConfigError(key, f"{path} not found")


def check_discriminator(config) -> None:
  """discriminator.kind is known; the DINO discriminator's grouped norm fits the batch."""
  kind = config.discriminator.kind
  if kind not in ("patchgan", "dinodisc"):
    raise ConfigError("discriminator.kind", f"must be 'patchgan' or 'dinodisc', got {kind!r}")
  if kind == "dinodisc":
    from gigatok_jax.models import dino_discriminator  # pylint: disable=import-outside-toplevel
    problem = dino_discriminator.check_batch(config.global_batch_size)
    if problem:
      raise ConfigError("global_batch_size", f"the DINO discriminator's BatchNormLocal: {problem}")


def check_eval_protocol(config) -> None:
  """eval.protocol names one of the evaluation protocols (metrics/evaluator.py)."""
  from gigatok_jax.metrics import evaluator  # pylint: disable=import-outside-toplevel
  if config.eval.protocol not in evaluator.PROTOCOLS:
    raise ConfigError("eval.protocol", f"must be one of {', '.join(evaluator.PROTOCOLS)}, got "
                      f"{config.eval.protocol!r}")


def check_ar_probe_inputs(config) -> None:
  """--mode=ar_probe: everything its later stages need, before training starts."""
  for key in ("eval_codes_path",):
    if not config.data[key]:
      raise ConfigError(f"data.{key}", "AR probing needs validation codes (validation loss and "
                        "the linear probe's top-1)")
  for key in ("fid_reference", "inception_path"):
    if not config.eval[key]:
      raise ConfigError(f"eval.{key}", "AR probing computes gFID: set it (README, Evaluation)")
    check_file(f"eval.{key}", config.eval[key], local=key == "inception_path")


def check_eval(config, num_devices: int | None = None) -> None:
  """--mode=eval of a tokenizer recipe: its batch splits over the data-parallel devices; the
  files it is given exist (before the checkpoint is loaded)."""
  check_batch_divisible(config, num_devices, "eval.batch_size")
  for key in ("inception_path", "fid_reference"):
    if config.eval[key]:
      check_file(f"eval.{key}", config.eval[key], local=key == "inception_path")


def check_reconstruct(config) -> None:
  """--mode=reconstruct: the image folder it is given exists (local or gs://)."""
  folder = config.data.reconstruct_input
  if folder and not fileio.isdir(folder):
    raise ConfigError("data.reconstruct_input", f"image folder {folder!r} does not exist")


GPT_MODE_CHECKS = {
    "sample": lambda config, n: check_sample(config, n),
    "extract_codes": lambda config, n: check_extract(config),
    "probe": lambda config, n: check_probe(config),
    "ar_probe": lambda config, n: (check_ar_probe_inputs(config), check_sample(config, n),
                                   check_probe(config)),
}
TOKENIZER_MODE_CHECKS = {
    "eval": lambda config, n: check_eval(config, n),
    "reconstruct": lambda config, n: check_reconstruct(config),
}


def validate_gpt(config, *, num_devices: int | None = None, check_data: bool = True,
                 mode: str = "") -> None:
  """Checks of a GPT recipe; `check_data` opens the training codes (and validation codes if set);
  `mode` adds that mode's own checks."""
  check_schema(config, gpt_schema.gpt_config())
  for key in ("total_steps", "global_batch_size", "checkpoint_every_steps", "log_every_steps",
              "eval_every_steps", "eval_num_batches", "max_checkpoints_to_keep"):
    _positive(config, key)
  check_gpt_model(config.model)
  for key in ("lr", "grad_clip"):
    _positive(config, f"optim.{key}")
  if config.optim.schedule not in ("wsd", "constant"):
    raise ConfigError("optim.schedule", f"must be 'wsd' or 'constant', got {config.optim.schedule!r}")
  if not 0.0 <= config.optim.decay_fraction <= 1.0:
    raise ConfigError("optim.decay_fraction", "must be in [0, 1]")
  if config.optim.warmup_steps < 0:
    raise ConfigError("optim.warmup_steps", "must be >= 0")
  check_distributed(config.distributed)
  check_inference_dtype(config)
  check_batch_divisible(config, num_devices)
  check_init_from(config)
  check_sampling(config)
  check_eval_protocol(config)
  for key in ("batch_size", "images_per_shard"):
    _positive(config, f"extract.{key}")
  if check_data:
    from gigatok_jax.data import codes
    m = config.model
    if not config.data.codes_path:
      raise ConfigError("data.codes_path", "is empty; set it to the directory written by "
                        "--mode=extract_codes (e.g. <workdir>/codes/train)")
    for key in ("codes_path", "eval_codes_path"):
      if config.data[key]:
        codes.check_codes_dir(config.data[key], f"data.{key}", vocab_size=m.vocab_size,
                              num_tokens=m.num_tokens, num_classes=m.num_classes)
  if mode in GPT_MODE_CHECKS:
    GPT_MODE_CHECKS[mode](config, num_devices)


def validate(config, *, num_devices: int | None = None, check_data: bool = True,
             check_teachers: bool | None = None, mode: str = "") -> None:
  """All checks, the one entry point; `check_data` opens the dataset (skip it for modes that do not
  read data) and, unless `check_teachers` says otherwise, the frozen teachers' weight files; `mode`
  (a --mode name, as modes/__init__.py passes it) adds that mode's own checks."""
  if config.get("task") == "gpt":
    return validate_gpt(config, num_devices=num_devices, check_data=check_data, mode=mode)
  check_schema(config, tokenizer_schema.tokenizer_config())
  for key in ("total_steps", "global_batch_size", "checkpoint_every_steps", "log_every_steps",
              "image_every_steps", "eval_num_images", "max_checkpoints_to_keep"):
    _positive(config, key)
  check_model(config.model, config.data.image_size)
  from gigatok_jax.models.tokenizer import num_tokens  # pylint: disable=import-outside-toplevel
  check_nested_dropout(config.model, num_tokens(config.model, config.data.image_size),
                       config.eval.get("num_tokens", 0))
  check_losses(config.loss)
  for key in ("lr", "disc_lr", "grad_clip", "cnn_lr_scale", "codebook_lr_scale"):
    _positive(config, f"optim.{key}")
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise ConfigError("optim.ema_decay", f"must be in [0, 1), got {config.optim.ema_decay}")
  for key in ("warmup_steps",):
    if config.optim[key] < 0:
      raise ConfigError(f"optim.{key}", "must be >= 0")

  check_distributed(config.distributed)
  check_inference_dtype(config)

  check_batch_divisible(config, num_devices)
  check_init_from(config)
  check_eval_protocol(config)
  check_discriminator(config)
  if check_data if check_teachers is None else check_teachers:
    check_teachers_config(config)
  if check_data:
    d = config.data
    splits = ("train",) if d.source == "array_record" and not d.eval_path else ("train", "eval")
    check_data_config(d, config.global_batch_size, splits=splits,
                      batch_size_key="global_batch_size")
  if mode in TOKENIZER_MODE_CHECKS:
    TOKENIZER_MODE_CHECKS[mode](config, num_devices)
  return None
