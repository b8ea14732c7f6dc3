"""Official checkpoints of any size (issue 18): sizes from the shapes, heads confirmed or refused.

The files are built here in the reference layout (checkpoint_layouts.md 1-2) from torch re-creations
of the reference modules (torch_reference.TTokenizer / TTokenizer2D, test_convert_gigatok.TGPT) with
random weights and sizes that no recipe has (e.g. an encoder 96 wide with 3 heads). Checks: such a
file converts with its head counts given as overrides and computes what the torch module computes;
without them the import stops with one line naming the flags; the wrong head count (which would
convert and compute something else) is refused where the file records the right one; the reference's
own sizes still settle by themselves; the CLI takes `--config.*` overrides end to end.

Files of the reference's big sizes are written with zero-stride (expanded) tensors: a few bytes on
disk, enough for everything that happens before the weights are copied.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gigatok_jax import config as config_lib  # noqa: E402
from gigatok_jax import inference, parallel, runs, tree_names  # noqa: E402
from gigatok_jax.api import sources  # noqa: E402
from gigatok_jax.convert import cli, release  # noqa: E402
from gigatok_jax.convert import gigatok as conv  # noqa: E402
from gigatok_jax.errors import CheckpointError, ConfigError, UserError  # noqa: E402
from helpers import REPO, load_recipe, subprocess_env  # noqa: E402
from test_convert_gigatok import TGPT, _patchgan  # noqa: E402
from torch_reference import (SEED_IMAGES, TTokenizer, TTokenizer2D, assert_close,  # noqa: E402
                             assert_differs, nhwc, randomize_)

# Sizes no recipe and no reference size has: a 96-wide encoder with 3 heads, a 64-wide decoder
# with 4; a two-level CNN (32 px images -> the 16 x 16 grid the torch Q-Former needs), a 128 x 6
# codebook and a 24-wide semantic projector.
CUSTOM = dict(cnn_ch=32, cnn_ch_mult=(1, 2), cnn_num_res_blocks=1, z_channels=32,
              enc_width=96, enc_layers=2, enc_heads=3, dec_width=64, dec_layers=3, dec_heads=4,
              codebook_size=128, code_dim=6, distill_dim=24)
HEAD_FLAGS = ["--config.model.enc_heads=3", "--config.model.dec_heads=4"]
HEADS = {"model.enc_heads": 3, "model.dec_heads": 4}
QUIET = dict(log=lambda *_: None)


def _model(**sizes):
  m = config_lib.model_config()
  m.update(sizes)
  return m


def _state_dict(module):
  return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _expanded(shapes):
  """{key: zero-stride torch tensor of that shape}: a reference-sized file of a few bytes."""
  return {k: torch.zeros(()).expand(*shape) for k, shape in shapes.items()}


def _reference_shapes(recipe):
  """The reference state-dict shapes of a shipped recipe's model."""
  config = load_recipe(recipe)
  if config.task == "tokenizer":
    rules = conv.tokenizer_rules(tree_names.flat_shapes(conv.abstract_tokenizer(config)[0]))
  else:
    rules = conv.gpt_rules(tree_names.flat_shapes(conv.abstract_gpt(config)))
  return {r.torch_key: r.torch_shape for r in rules}


def _numpy(sd):
  return {k: v.numpy() for k, v in sd.items()}


def _load(out):
  config = runs.read_config(out)
  return config, inference.load(config, out, parallel.make_mesh(config.mesh, jax.devices()[:1]))


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
  """A reference-layout tokenizer checkpoint of CUSTOM sizes (with a PatchGAN of ndf 16) and its
  torch module."""
  root = tmp_path_factory.mktemp("custom")
  torch.manual_seed(11)
  tok = randomize_(TTokenizer(_model(**CUSTOM))).eval()
  with torch.no_grad():      # sharper attention (q, k rows x 4): the head count shows in the output
    for name, p in tok.named_parameters():
      if name.endswith("in_proj_weight"):
        p[:2 * p.shape[1]] *= 4
  sd = _state_dict(tok)
  sd["quantize.codebook_used"] = torch.zeros(65536)
  src = str(root / "VQ_custom.pt")
  torch.save({"model": sd, "discriminator": _patchgan(16).state_dict(), "steps": 42,
              "args": argparse.Namespace(model_config="configs/vq/VQ_custom.yaml",
                                         image_size=256)}, src)
  return dict(tok=tok, sd=sd, src=src, root=root)


@pytest.fixture(scope="module")
def converted(custom, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("converted") / "run")
  assert cli.main([f"--src={custom['src']}", f"--out={out}", *HEAD_FLAGS]) == 0
  return out


def _images(size=32):
  torch.manual_seed(SEED_IMAGES)
  return torch.rand(2, 3, size, size) * 2 - 1


def _assert_tokenizer_matches(tok_module, loaded, what, tol=2e-4):
  x = _images()
  with torch.no_grad():
    recon, idx, *_ = tok_module(x)
  out = loaded.model(loaded.params)(jnp.asarray(nhwc(x)))
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), idx.numpy())
  assert_close(out.reconstruction, nhwc(recon), tol, what)
  return out


# ------------------------------------------------------------------------------- (a) converts
def test_custom_sizes_with_head_overrides_compute_the_reference_function(custom, converted):
  config, loaded = _load(converted)
  m = config.model
  for key, value in CUSTOM.items():                      # every size: the file's (heads: flags)
    got = tuple(m[key]) if isinstance(value, tuple) else m[key]
    assert got == value, (key, got, value)
  assert (m.kind, m.mlp_ratio, config.data.image_size) == ("1d", 4.0, 32)
  assert (config.discriminator.ndf, config.discriminator.n_layers) == (16, 3)
  info = runs.read_imported_info(os.path.join(converted, runs.PRETRAINED))
  assert info["heads"] == {"model.enc_heads": "3 from --config.model.enc_heads",
                           "model.dec_heads": "4 from --config.model.dec_heads"}
  assert info["overrides"] == {"model.enc_heads": "3", "model.dec_heads": "4"}
  assert info["recipe"] == "configs/tokenizer_ss.py" and not info["recipe_given"]
  assert info["source_steps"] == 42 and loaded.step == 42
  assert info["items"] == ["disc_params", "disc_stats", "gen_params"]
  _assert_tokenizer_matches(custom["tok"], loaded, "custom-size tokenizer, heads from overrides")


def test_a_wrong_head_count_would_compute_something_else(custom, converted, tmp_path):
  """Why heads are never guessed: the same weights read with 6 encoder heads (or 8 decoder heads)
  convert without a complaint about shapes, and reconstruct something else."""
  _, right = _load(converted)
  x = jnp.asarray(nhwc(_images()))
  want = right.model(right.params)(x).reconstruction
  for side, heads in (("enc", 6), ("dec", 8)):
    out = release.import_checkpoint(custom["src"], str(tmp_path / side),
                                    overrides={**HEADS, f"model.{side}_heads": heads}, **QUIET)
    _, wrong = _load(out)
    assert_differs(wrong.model(wrong.params)(x).reconstruction, want, 0.05,
                   f"{heads} {side} heads instead of {HEADS[f'model.{side}_heads']}")


# ------------------------------------------------------------------------ (b) refused, one line
def test_without_head_counts_the_import_names_the_flags(custom, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main([f"--src={custom['src']}", f"--out={out}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("error: VQ_custom.pt: encoder width 96 x 2 layers and decoder width "
                           "64 x 3 layers match no official size and the file records no head "
                           "count; pass --config.model.enc_heads=N --config.model.dec_heads=N"), err
  assert not out.exists()
  # One side known: only the other flag is asked for.
  with pytest.raises(CheckpointError) as e:
    release.import_checkpoint(custom["src"], str(out), overrides={"model.enc_heads": "3"}, **QUIET)
  text = str(e.value)
  assert "decoder width 64 x 3 layers matches no official size" in text
  assert "--config.model.dec_heads=N" in text and "enc_heads=N" not in text
  assert "\n" not in text
  # A count that does not divide the width names the flag as well.
  with pytest.raises(CheckpointError, match=r"5 heads \(from --config.model.enc_heads\) do not "
                     r"divide the encoder width 96; pass --config.model.enc_heads=N"):
    release.import_checkpoint(custom["src"], str(out), overrides={**HEADS, "model.enc_heads": 5},
                              **QUIET)


def test_head_counts_recorded_in_args_need_no_flags(custom, tmp_path):
  """Head-count fields of a saved `args` settle the heads; one that does not fit is not used."""
  sd = _numpy(custom["sd"])
  config, _, heads = release.settle("", sd, args=argparse.Namespace(encoder_heads=3,
                                                                     dec_heads=4), **QUIET)
  assert (config.model.enc_heads, config.model.dec_heads) == (3, 4)
  assert heads == {"model.enc_heads": "3 from args.encoder_heads=3",
                   "model.dec_heads": "4 from args.dec_heads=4"}
  notes = []
  with pytest.raises(CheckpointError, match="encoder width 96 x 2 layers matches no official"):
    release.settle("", sd, args={"enc_heads": 7, "dec_heads": 4}, log=notes.append)
  assert any("args.enc_heads=7 does not divide the width 96" in n for n in notes), notes


# ------------------------------------------------------------------- (c) contradictions refused
@pytest.fixture(scope="module")
def official_ss(tmp_path_factory):
  """A VQ_SS256-shaped file (zero-stride tensors) whose args name its reference config."""
  src = str(tmp_path_factory.mktemp("ss") / "VQ_SS256_e100.pt")
  torch.save({"model": _expanded(_reference_shapes("tokenizer_ss")),
              "args": argparse.Namespace(model_config="configs/vq/VQ_SS256.yaml")}, src)
  return src


def test_heads_contradicting_the_files_record_are_refused(official_ss, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main([f"--src={official_ss}", f"--out={out}", "--config.model.enc_heads=4"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: VQ_SS256_e100.pt: --config.model.enc_heads=4 contradicts the file's "
                 "args.model_config='configs/vq/VQ_SS256.yaml' (8 heads); drop the flag or make "
                 "it 8"], err
  # The same count as the record is fine (sizes and heads settled before any weight is copied).
  sd = release.weight_files.read_checkpoint(official_ss)
  config, spec, heads = release.settle("", sd["model"], {"model.enc_heads": 8}, sd["args"],
                                       **QUIET)
  assert spec == "configs/tokenizer_ss.py"
  assert heads["model.dec_heads"] == ("8 from args.model_config="
                                      "'configs/vq/VQ_SS256.yaml'")
  # An explicit recipe whose heads contradict the record is refused too.
  recipe = tmp_path / "ss_4_heads.py"
  recipe.write_text("from gigatok_jax import config\n"
                    "def get_config(variant=''):\n"
                    "  c = config.tokenizer_config('S', 'S')\n"
                    "  c.model.enc_heads = 4\n  return c\n")
  with pytest.raises(CheckpointError, match=r"--recipe=.*ss_4_heads.py has enc_heads=4 but the "
                     r"file's args.model_config='configs/vq/VQ_SS256.yaml' means 8 heads; pass "
                     r"--config.model.enc_heads=8"):
    release.settle(str(recipe), sd["model"], None, sd["args"], **QUIET)


def test_gpt_heads_contradicting_args_gpt_model_are_refused(tmp_path, capsys):
  src = str(tmp_path / "GPT_B.pt")
  torch.save({"model": _expanded(_reference_shapes("gpt_b")), "steps": 3,
              "args": argparse.Namespace(gpt_model="GPT-B", image_size=256, downsample_size=16)},
             src)
  out = tmp_path / "run"
  assert cli.main([f"--src={src}", f"--out={out}", "--config.model.heads=8"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: GPT_B.pt: --config.model.heads=8 contradicts the file's "
                 "args.gpt_model='GPT-B' (12 heads); drop the flag or make it 12"], err
  assert not out.exists()


def test_reference_sizes_settle_by_themselves():
  """Width and depth of a reference size give its heads (no args, no flags); a named size that
  does not fit the weights is reported and not used."""
  shapes = {k: np.broadcast_to(np.float32(0), s) for k, s in _reference_shapes("gpt_b").items()}
  grown = {k: v for k, v in shapes.items() if not k.startswith("layers.")}
  for i in range(48):                                          # GPT-XXXL's depth, width 768
    grown.update({k.replace("layers.0.", f"layers.{i}."): v for k, v in shapes.items()
                  if k.startswith("layers.0.")})
  config, spec, heads = release.settle("", shapes, **QUIET)
  assert (spec, config.model.heads, heads) == ("configs/gpt_b.py", 12,
                                               {"model.heads": "12 from the reference's size "
                                                               "'GPT-B'"})
  notes = []
  with pytest.raises(CheckpointError, match=r"^the checkpoint: width 768 x 48 layers matches no "
                     r"official GPT size and the file records no head count; pass "
                     r"--config.model.heads=N \(in Python: overrides=\{'model.heads': N\}\)$"):
    release.settle("", grown, args=argparse.Namespace(gpt_model="GPT-XXXL"), log=notes.append)
  assert any("args.gpt_model='GPT-XXXL' means 2560 wide x 48 layers" in n for n in notes), notes
  config, spec, _ = release.settle("", grown, {"model.heads": "16"}, **QUIET)
  assert (config.model.layers, config.model.heads, spec) == (48, 16, "configs/gpt_b.py")


# ---------------------------------------------------------------------------------- (d) GPTs
@pytest.fixture(scope="module")
def custom_gpt(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt")
  torch.manual_seed(7)
  ref = TGPT(vocab=80, width=96, layers=2, heads=3, classes=12, tokens=16).eval()
  src = str(root / "GPT_custom.pt")
  torch.save({"model": _state_dict(ref), "steps": 5,
              "args": argparse.Namespace(gpt_model="GPT-B", image_size=64, downsample_size=16)},
             src)
  return dict(ref=ref, src=src)


def test_custom_gpt_with_head_override_matches_the_reference_logits(custom_gpt, tmp_path):
  notes = []
  with pytest.raises(CheckpointError, match="width 96 x 2 layers matches no official GPT size"):
    release.import_checkpoint(custom_gpt["src"], str(tmp_path / "no"), log=notes.append)
  assert any("args.gpt_model='GPT-B' means 768 wide x 12 layers" in n for n in notes), notes
  out = release.import_checkpoint(custom_gpt["src"], str(tmp_path / "gpt"),   # f32 to compare
                                  overrides={"model.heads": 3, "model.dtype": "float32"}, **QUIET)
  config, gpt = _load(out)
  m = config.model
  assert (m.width, m.layers, m.heads, m.vocab_size, m.num_classes, m.num_tokens, m.position) == \
      (96, 2, 3, 80, 12, 16, "learned_1d")
  tokens = torch.randint(0, 80, (3, 16))
  labels = torch.tensor([0, 7, 12])                                # 12 = the null class
  with torch.no_grad():
    want = custom_gpt["ref"](tokens, labels).numpy()
  got = gpt.model(gpt.params)(jnp.asarray(tokens.numpy()), jnp.asarray(labels.numpy()))
  assert_close(got, want, 1e-4, "custom-size GPT logits, heads from overrides")


def test_gpt_sizes_the_file_fixes_cannot_be_overridden(custom_gpt):
  raw = release.weight_files.read_checkpoint(custom_gpt["src"])
  with pytest.raises(CheckpointError, match=r"the weights fix these sizes: "
                     r"--config.model.vocab_size=100 vs the file's 80"):
    release.settle("", raw["model"], {"model.heads": 3, "model.vocab_size": 100}, raw["args"],
                   **QUIET)
  # rope_2d files keep no position table: num_tokens comes from args (64 px / 16 = 4 x 4).
  rope = {k: v for k, v in raw["model"].items() if k != "positional_embedding"}
  config = release.configure("", rope, {"model.heads": 3}, raw["args"], **QUIET)
  assert (config.model.position, config.model.num_tokens) == ("rope_2d", 16)


# ----------------------------------------------------------------------- overrides and sources
def test_override_values_are_parsed_by_the_keys_type(custom):
  sd = _numpy(custom["sd"])
  config = release.configure("", sd, {**HEADS, "model.scan_layers": "true", "model.remat": "full",
                                      "config.seed": "7", "optim.lr": "3e-5",
                                      "eval.fid_reference": "'x.npz'"}, **QUIET)
  assert (config.model.scan_layers, config.model.remat, config.seed, config.optim.lr,
          config.eval.fid_reference) == (True, "full", 7, 3e-5, "x.npz")
  for overrides, message in (({"model.enc_hedas": 3}, r"config key 'model.enc_hedas': unknown "
                              r"key \(did you mean 'model.enc_heads'\?\)"),
                             ({"model.enc_heads": "three"},
                              "cannot read 'three' as a value of type int"),
                             ({"model.enc_heads": 3.5}, "must be of type int, got 3.5"),
                             ({"model": 3}, "is a group of keys")):
    with pytest.raises(ConfigError, match=message):
      release.configure("", sd, overrides, **QUIET)
  # Keys the schema checks after the import: distill_depth beyond the decoder's 3 layers.
  with pytest.raises(ConfigError, match=r"model.distill_depth.*dec_layers=3"):
    release.configure("", sd, {**HEADS, "model.distill_depth": 4}, **QUIET)


def test_a_file_without_the_semantic_projector_imports(custom, tmp_path):
  sd = {k: v for k, v in custom["sd"].items() if ".distill_mlp." not in k}
  src = str(tmp_path / "VQ_nodistill.pt")
  torch.save({"model": sd}, src)
  notes = []
  out = release.import_checkpoint(src, str(tmp_path / "run"), overrides=HEADS, log=notes.append)
  config, loaded = _load(out)
  assert any("no semantic projector" in n for n in notes), notes
  assert (config.model.distill_dim, config.loss.semantic_weight) == (768, 0.0)
  _assert_tokenizer_matches(custom["tok"], loaded, "tokenizer without the projector")


def test_2d_custom_sizes_import_and_export_bit_identically(tmp_path):
  m = _model(**{**CUSTOM, "kind": "2d", "vit_layer_type": "decoder", "cnn_ch_mult": (1, 2, 2)})
  torch.manual_seed(13)
  tok = randomize_(TTokenizer2D(m, 8))
  sd = {k: v.detach().numpy().copy() for k, v in tok.state_dict().items()}
  config, _, _ = release.settle("", sd, HEADS, **QUIET)
  assert (config.model.kind, config.model.vit_layer_type, config.data.image_size,
          tuple(config.model.cnn_ch_mult)) == ("2d", "decoder", 32, (1, 2, 2))
  src, out = str(tmp_path / "VQ_2d.pt"), str(tmp_path / "run")
  torch.save({"ema": {k: torch.from_numpy(v) for k, v in sd.items()}}, src)
  release.import_checkpoint(src, out, overrides=HEADS, **QUIET)
  path = str(tmp_path / "export.safetensors")
  release.export_run(out, path, **QUIET)
  from safetensors.numpy import load_file
  exported = load_file(path)
  assert set(exported) == set(sd) | {conv.CODEBOOK_USED[0]}
  for k, v in sd.items():
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_api_sources_pass_overrides_and_reconvert_when_they_change(custom, tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  calls = []
  real = release.import_checkpoint

  def counting(*args, **kwargs):
    calls.append(kwargs.get("overrides"))
    return real(*args, **kwargs)
  monkeypatch.setattr(release, "import_checkpoint", counting)
  with pytest.raises(CheckpointError, match="pass --config.model.enc_heads=N"):
    sources.run_directory(custom["src"], cache_dir=cache, **QUIET)
  first = sources.run_directory(custom["src"], overrides=HEADS, cache_dir=cache, **QUIET)
  assert runs.read_config(first).model.enc_heads == 3
  assert sources.run_directory(custom["src"], cache_dir=cache, **QUIET) == first   # cached
  assert sources.run_directory(custom["src"], overrides={"model.dec_heads": "4",
                                                         "model.enc_heads": "3"},
                               cache_dir=cache, **QUIET) == first     # the same, as text
  assert len(calls) == 2
  again = sources.run_directory(custom["src"], overrides={**HEADS, "model.enc_heads": 6},
                                cache_dir=cache, **QUIET)
  assert again == first and runs.read_config(again).model.enc_heads == 6 and len(calls) == 3
  with pytest.raises(UserError, match="overrides apply to the conversion of an official weight"):
    sources.run_directory(again, overrides=HEADS)


# ------------------------------------------------------------------------------- (f) the CLI
def test_cli_takes_config_overrides_end_to_end(custom, tmp_path):
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "gigatok_jax.convert", f"--src={custom['src']}", f"--out={out}",
         "--config.model.enc_heads=3", "--config.model.dec_heads", "4",
         "--config.model.scan_layers=True"]
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "heads: enc_heads 3 from --config.model.enc_heads, dec_heads 4 from " \
         "--config.model.dec_heads" in proc.stdout, proc.stdout
  with open(out / "config.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert (saved["model"]["enc_heads"], saved["model"]["dec_heads"],
          saved["model"]["scan_layers"], saved["model"]["enc_width"]) == (3, 4, True, 96)
  proc = subprocess.run(cmd[:5] + [f"--out={tmp_path / 'bad'}", "--config.model.enc_hedas=3"],
                        cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: config key 'model.enc_hedas': unknown key (did you mean 'model.enc_heads'?)"]
  assert not (tmp_path / "bad").exists()


def test_official_weights_get_the_reference_architecture_whatever_the_recipe(custom, tmp_path,
                                                                             monkeypatch):
  """A recipe may pick options with no weights of their own (configs/demo.py: 8 GroupNorm groups,
  'unpool' decoder queries); an official file was trained without them, so its import resets them
  and still computes the reference function."""
  load = release.config_lib.load_recipe

  def demo_like(*args, **kwargs):
    config = load(*args, **kwargs)
    config.model.cnn_norm_groups = 8
    config.model.dec_query_init = "unpool"
    config.model.num_latent_tokens = 2 * 16 * 16    # the file's one token per cell wins
    return config
  monkeypatch.setattr(release.config_lib, "load_recipe", demo_like)
  out = release.import_checkpoint(custom["src"], str(tmp_path / "run"), overrides=HEADS, **QUIET)
  config, loaded = _load(out)
  assert (config.model.cnn_norm_groups, config.model.dec_query_init) == (32, "first_token")
  assert config.model.num_latent_tokens == 0
  _assert_tokenizer_matches(custom["tok"], loaded, "official weights read through a demo-like recipe")


def test_export_refuses_a_run_the_reference_code_cannot_compute(tmp_path):
  for key, value in (("cnn_norm_groups", 8), ("dec_query_init", "unpool")):
    config = load_recipe("demo", "tiny")
    config.model.cnn_norm_groups, config.model.dec_query_init = 32, "first_token"
    config.model[key] = value
    workdir = str(tmp_path / key)
    runs.write_config(config, workdir)
    with pytest.raises(CheckpointError, match=f"model.{key}={value!r} has no counterpart"):
      release.export_run(workdir, str(tmp_path / "out.safetensors"), log=lambda *_: None)
