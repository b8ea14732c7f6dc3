"""Importing official GigaTok tokenizer / GPT checkpoints (convert/gigatok.py, convert/release.py).

The PyTorch side is built from the reference layout (checkpoint_layouts.md 1-2): the tokenizer is
torch_reference's reference module (its state-dict names are the reference's), the GPT a small
torch module written here from the layout's description; both get random weights. Checks: the
state dicts convert with nothing left over, the converted models compute what the torch modules
compute, ours -> reference -> ours is the identity, strict errors name the tensors, the recipe is
inferred from the shapes (key counts of the real recipes equal the reference's), and a converted
run works in reconstruct / sample / train.
"""

import argparse
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gigatok_jax import build, inference, parallel, runs, tree_names  # noqa: E402
from gigatok_jax import config as config_lib  # noqa: E402
from gigatok_jax.convert import cli, gigatok, release  # noqa: E402
from gigatok_jax.convert import gigatok as conv  # noqa: E402
from gigatok_jax.errors import CheckpointError, ConfigError  # noqa: E402
from gigatok_jax.models.discriminator import PatchGANDiscriminator  # noqa: E402
from helpers import load_recipe  # noqa: E402
from torch_reference import (SEED_IMAGES, TTokenizer, TTokenizer2D, nhwc,  # noqa: E402
                             randomize_, assert_close)

# A tiny 1D recipe whose grid is 16 x 16 (the torch reference's pooling grids need it): 64 px
# images, two downsamplings. Written as a recipe file because the converter takes recipe files.
TINY16 = '''
from gigatok_jax import config
def get_config(variant=""):
  c = config.with_variant(config.tokenizer_config(), "tiny")
  c.model.update(dict(cnn_ch=32, cnn_ch_mult=(1, 2, 2), cnn_num_res_blocks=1, z_channels=32,
                      enc_width=32, enc_layers=2, enc_heads=2, dec_width=32, dec_layers=3,
                      dec_heads=2, codebook_size=256, distill_dim=16))
  c.discriminator.ndf = 8
  return c
'''


def _patchgan(ndf, n_layers=3):
  """The reference PatchGAN as `main.{idx}` (layouts 1.1): conv, [BN,] LeakyReLU per layer."""
  layers, mult = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)], 1
  for n in range(1, n_layers + 1):
    prev, mult = mult, min(2 ** n, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=False),
               nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
  layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
  model = nn.Module()
  model.main = nn.Sequential(*layers)
  model.forward = model.main.forward
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        for t in (m.weight, m.bias, m.running_mean):
          t.copy_(0.3 * torch.randn_like(t))
        m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
  return model.eval()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A reference-layout training checkpoint file (.pt) and its torch modules."""
  root = tmp_path_factory.mktemp("released")
  recipe = root / "tiny16.py"
  recipe.write_text(TINY16)
  config = config_lib.load_recipe(str(recipe))
  torch.manual_seed(3)
  tok = randomize_(TTokenizer(config.model))
  disc = _patchgan(config.discriminator.ndf)
  sd = {k: v.clone() for k, v in tok.state_dict().items()}
  sd["quantize.codebook_used"] = torch.zeros(65536)
  ema = {k: v + 0.01 for k, v in sd.items()}
  src = root / "VQ_tiny.pt"
  torch.save({"model": ema, "ema": sd, "discriminator": disc.state_dict(), "steps": 1234,
              "optimizer": {"state": {}}, "args": argparse.Namespace(lr=1e-4)}, src)
  return dict(recipe=str(recipe), config=config, tok=tok, disc=disc, sd=sd, src=str(src))


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("run") / "tok")
  assert cli.main([f"--src={released['src']}", f"--out={out}",
                    f"--recipe={released['recipe']}"]) == 0
  return out


def _assert_reference_function(released, loaded, params, what):
  """Imported weights give the torch tokenizer's codes and reconstruction (within 2e-4) on the
  seeded images, which it returns (NCHW torch)."""
  torch.manual_seed(SEED_IMAGES)
  x = torch.rand(2, 3, 64, 64) * 2 - 1
  with torch.no_grad():
    recon, idx, *_ = released["tok"](x)
  out = loaded.model(params)(jnp.asarray(nhwc(x)))
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), idx.numpy())
  assert_close(out.reconstruction, nhwc(recon), 2e-4, what)
  return x


def test_tokenizer_import_computes_the_reference_function(released, imported):
  info = runs.read_imported_info(os.path.join(imported, "pretrained"))
  assert info["weights"] == "ema" and info["source_steps"] == 1234    # ema first, as the reference
  assert info["items"] == ["disc_params", "disc_stats", "gen_params"]
  config = runs.read_config(imported)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  tok = inference.load(config, imported, mesh)
  params, step = tok.params, tok.step
  assert step == 1234
  x = _assert_reference_function(released, tok, params, "imported tokenizer reconstruction")

  # The discriminator (PatchGAN with BatchNorm running statistics) came along too.
  disc_spec = build.discriminator(config, mesh)
  restored = runs.restore_imported(os.path.join(imported, "pretrained"),
                                   {"disc_params": disc_spec.abstract,
                                    "disc_stats": disc_spec.stats})
  d = config.discriminator
  graph = nnx.split(nnx.eval_shape(lambda: PatchGANDiscriminator(ndf=d.ndf, n_layers=d.n_layers,
                                                                 rngs=nnx.Rngs(0))),
                    nnx.Param, nnx.BatchStat)[0]
  ours = nnx.merge(graph, restored["disc_params"], restored["disc_stats"])
  with torch.no_grad():
    ref_logits = released["disc"](x)
  assert_close(ours(jnp.asarray(nhwc(x)), train=False), nhwc(ref_logits), 1e-4,
               "imported discriminator (eval mode)")


def test_round_trip_is_the_identity(released, imported, tmp_path):
  sd = {k: v.numpy() for k, v in released["sd"].items()}
  shapes = tree_names.flat_shapes(conv.abstract_tokenizer(released["config"])[0])
  rules = conv.tokenizer_rules(shapes)
  flat = conv.from_torch(rules, sd, "sd", extra=dict([conv.CODEBOOK_USED]))
  back = conv.to_torch(rules, flat)
  assert set(back) == set(sd) - {"quantize.codebook_used"}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)
  again = conv.from_torch(rules, back, "back", extra=dict([conv.CODEBOOK_USED]))
  for k, v in flat.items():
    np.testing.assert_array_equal(v, again[k], err_msg=k)
  # The CLI export of the imported run writes the same state dict (+ the usage buffer).
  path = str(tmp_path / "export.safetensors")
  assert cli.main(["--export", f"--src={imported}", f"--out={path}"]) == 0
  from safetensors.numpy import load_file
  exported = load_file(path)
  assert set(exported) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_scanned_recipe_imports_and_exports_the_same_weights(released, tmp_path):
  """With model.scan_layers the stacks are stored depth-first; the file's tensors round-trip and
  the imported model computes the reference function all the same."""
  recipe = tmp_path / "tiny16_scanned.py"
  recipe.write_text(TINY16.replace("  return c\n", "  c.model.scan_layers = True\n  return c\n"))
  out = release.import_checkpoint(released["src"], str(tmp_path / "run"), weights="ema",
                                  recipe=str(recipe), log=lambda *_: None)
  config = runs.read_config(out)
  assert config.model.scan_layers
  tok = inference.load(config, out, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  params = tok.params
  flat = tree_names.flatten(params)
  assert flat["s1to2decoder.stack.layers.mlp.fc1.kernel"].shape[0] == config.model.dec_layers
  _assert_reference_function(released, tok, params, "scanned imported tokenizer")
  path = str(tmp_path / "export.safetensors")
  release.export_run(out, path, log=lambda *_: None)
  from safetensors.numpy import load_file
  exported = load_file(path)
  assert set(exported) == set(released["sd"])
  for k, v in released["sd"].items():
    np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)
  # Reading them into the other layout stops with the key to set.
  config.model.scan_layers = False
  with pytest.raises(CheckpointError, match="set --config.model.scan_layers=True"):
    inference.load(config, out, parallel.make_mesh(config.mesh, jax.devices()[:1]))


def test_strict_errors_name_the_tensors(released):
  sd = {k: v.numpy() for k, v in released["sd"].items()}
  rules = conv.tokenizer_rules(tree_names.flat_shapes(conv.abstract_tokenizer(released["config"])[0]))
  bad = dict(sd)
  del bad["s1to2decoder.distill_mlp.4.bias"]
  bad["encoder.extra.weight"] = np.zeros(3, np.float32)
  bad["quant_conv.weight"] = np.zeros((8, 31, 1, 1), np.float32)
  with pytest.raises(CheckpointError) as e:
    conv.from_torch(rules, bad, "VQ_tiny.pt", extra=dict([conv.CODEBOOK_USED]))
  text = str(e.value)
  for part in ("VQ_tiny.pt", "missing ['s1to2decoder.distill_mlp.4.bias']",
               "unexpected ['encoder.extra.weight']", "quant_conv.weight: file (8, 31, 1, 1)"):
    assert part in text, text
  # A recipe that does not fit is reported with the one the shapes point to.
  with pytest.raises(CheckpointError, match="dec_width checkpoint 32 vs recipe 512"):
    release.configure("configs/tokenizer_ss.py", sd)
  with pytest.raises(CheckpointError, match="neither a GigaTok tokenizer"):
    release.kind_of({"foo.weight": np.zeros(1)})
  with pytest.raises(CheckpointError, match="no 's1to2decoder.ln_post.weight'"):
    release.infer_recipe({k: v for k, v in sd.items() if k != "s1to2decoder.ln_post.weight"})


def test_dino_discriminator_heads_are_imported_and_unknown_ones_skipped(released, tmp_path):
  """The B-L DINO-discriminator release: its heads (the official DinoDisc's `heads.*`, spectral
  vectors included) become the run's discriminator, kind 'dinodisc'; an unknown discriminator is
  skipped with a note."""
  from test_dino_discriminator import TDisc  # pylint: disable=import-outside-toplevel
  heads = TDisc()
  src = str(tmp_path / "dino_disc.pt")
  torch.save({"model": released["sd"], "discriminator": heads.state_dict()}, src)
  notes = []
  out = release.import_checkpoint(src, str(tmp_path / "run"), recipe=released["recipe"],
                                  log=notes.append)
  info = runs.read_imported_info(os.path.join(out, "pretrained"))
  assert info["items"] == ["disc_params", "disc_stats", "gen_params"]
  config = runs.read_config(out)
  assert (config.discriminator.kind, config.discriminator.depth) == ("dinodisc", 12)
  assert any("DINO discriminator" in n and "teachers.dino_disc_path" in n for n in notes), notes
  _, disc, stats = gigatok.abstract_tokenizer(config)
  trees = runs.restore_imported(os.path.join(out, "pretrained"),
                                {"disc_params": disc, "disc_stats": stats})
  np.testing.assert_array_equal(np.asarray(trees["disc_stats"]["heads"][4]["conv2"]["u"]),
                                heads.heads[4][1].fn[0].weight_u.numpy())
  np.testing.assert_array_equal(np.asarray(trees["disc_params"]["heads"][0]["conv1"]["weight"]),
                                heads.heads[0][0][0].weight_orig.detach().numpy().transpose(2, 1, 0))
  src = str(tmp_path / "other_disc.pt")
  torch.save({"model": released["sd"], "discriminator": {"dino.blocks.0.weight": torch.zeros(2)}},
             src)
  notes = []
  out = release.import_checkpoint(src, str(tmp_path / "run2"), recipe=released["recipe"],
                                  log=notes.append)
  assert runs.read_imported_info(os.path.join(out, "pretrained"))["items"] == ["gen_params"]
  assert any("unknown kind" in n for n in notes), notes


# Every recipe kind in the reference naming, built from torch re-creations of the reference modules
# (torch_reference: TTokenizer for 1D, TTokenizer2D for VQVitModel2DPlus), so that a naming gap
# in any kind (issue 23: the 2D `encoder_embed` / `decoder_embed`) fails here.
KINDS = {"1d": None, "2d_decoder_layers": "configs/tokenizer_ss_2d.py:tiny",
         "2d_plain_layers": "configs/tokenizer_sb_2d.py:tiny"}


def _reference_state_dict(kind, released):
  """(recipe, reference-named state dict as numpy) of a random-weight torch tokenizer of `kind`."""
  if kind == "1d":
    return released["recipe"], {k: v.numpy() for k, v in released["sd"].items()}
  recipe = KINDS[kind]
  config = config_lib.load_recipe(recipe)
  grid = build.tokenizer(config).abstract["s2dencoder"]["positional_embedding"].shape[0]
  torch.manual_seed(5)
  tok = randomize_(TTokenizer2D(config.model, int(round(grid ** 0.5))))
  sd = {k: v.numpy().copy() for k, v in tok.state_dict().items()}
  sd["quantize.codebook_used"] = np.zeros(65536, np.float32)
  return recipe, sd


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_imports_runs_and_exports_bit_identically(kind, released, tmp_path):
  recipe, sd = _reference_state_dict(kind, released)
  if kind != "1d":
    assert {"s2dencoder.encoder_embed.weight", "s2ddecoder.decoder_embed.weight"} <= set(sd)
    assert not any(".embed." in k for k in sd)
  src, out = str(tmp_path / "VQ_ref.pt"), str(tmp_path / "run")
  torch.save({"ema": {k: torch.from_numpy(v) for k, v in sd.items()}, "steps": 7}, src)
  assert cli.main([f"--src={src}", f"--out={out}", f"--recipe={recipe}"]) == 0
  config = runs.read_config(out)
  tok = inference.load(config, out, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  flat = tree_names.flatten(jax.device_get(tok.params))
  if kind != "1d":   # our `embed` holds the reference's `encoder_embed` / `decoder_embed`
    for ours, ref in (("s2dencoder", "encoder_embed"), ("s2ddecoder", "decoder_embed")):
      np.testing.assert_array_equal(flat[f"{ours}.embed.kernel"], sd[f"{ours}.{ref}.weight"].T)
      np.testing.assert_array_equal(flat[f"{ours}.embed.bias"], sd[f"{ours}.{ref}.bias"])
  torch.manual_seed(SEED_IMAGES)
  x = jnp.asarray(nhwc(torch.rand(2, 3, 64, 64) * 2 - 1))
  result = tok.model(tok.params)(x)
  assert result.reconstruction.shape == x.shape
  assert np.isfinite(np.asarray(result.reconstruction)).all()
  path = str(tmp_path / "export.safetensors")
  assert cli.main(["--export", f"--src={out}", f"--out={path}"]) == 0
  from safetensors.numpy import load_file
  exported = load_file(path)
  assert set(exported) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_2d_exports_of_older_versions_still_import(released):
  """Files exported before issue 23 named the 2D input layers `s2d*.embed.*`: still accepted."""
  recipe, sd = _reference_state_dict("2d_plain_layers", released)
  old = {k.replace(".encoder_embed.", ".embed.").replace(".decoder_embed.", ".embed."): v
         for k, v in sd.items()}
  shapes = tree_names.flat_shapes(conv.abstract_tokenizer(config_lib.load_recipe(recipe))[0])
  rules = conv.tokenizer_rules(shapes)
  want = conv.from_torch(rules, sd, "new", extra=dict([conv.CODEBOOK_USED]))
  got = conv.from_torch(rules, conv.upgrade_legacy_keys(old), "old",
                        extra=dict([conv.CODEBOOK_USED]))
  assert set(got) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


# Key counts of the reference state dicts (checkpoint_layouts.md 1.2, 1.5, 2; the tokenizer counts
# include the quantize.codebook_used buffer).
@pytest.mark.parametrize("recipe, keys", [("tokenizer_ss", 538), ("tokenizer_sb", 646),
                                          ("tokenizer_bl", 970), ("tokenizer_xlxxl", 1834),
                                          ("tokenizer_ss_2d", 534), ("gpt_b", 89)])
def test_recipes_are_inferred_from_reference_shapes(recipe, keys):
  config = load_recipe(recipe)
  if config.task == "tokenizer":
    rules = conv.tokenizer_rules(tree_names.flat_shapes(conv.abstract_tokenizer(config)[0]))
    shapes = {r.torch_key: jax.ShapeDtypeStruct(r.torch_shape, jnp.float32) for r in rules}
    shapes[conv.CODEBOOK_USED[0]] = jax.ShapeDtypeStruct(conv.CODEBOOK_USED[1], jnp.float32)
  else:
    rules = conv.gpt_rules(tree_names.flat_shapes(conv.abstract_gpt(config)))
    shapes = {r.torch_key: jax.ShapeDtypeStruct(r.torch_shape, jnp.float32) for r in rules}
  assert len(shapes) == keys
  assert release.infer_recipe(shapes) == f"configs/{recipe}.py"


# --------------------------------------------------------------------------------------- GPT
class TGPT(nn.Module):
  """The reference GPT-1D as checkpoint_layouts.md section 2 describes it (no dropout)."""

  def __init__(self, vocab, width, layers, heads, classes, tokens):
    super().__init__()
    hidden = -(-int(2 * 4 * width / 3) // 256) * 256
    self.heads = heads
    self.tok_embeddings = nn.Embedding(vocab, width)
    self.cls_embedding = nn.Module()
    self.cls_embedding.embedding_table = nn.Embedding(classes + 1, width)
    self.positional_embedding = nn.Parameter(torch.randn(tokens + 1, width) * 0.02)
    self.layers = nn.ModuleList()
    for _ in range(layers):
      block = nn.Module()
      block.attention = nn.Module()
      block.attention.wqkv = nn.Linear(width, 3 * width, bias=False)
      block.attention.wo = nn.Linear(width, width, bias=False)
      block.feed_forward = nn.Module()
      block.feed_forward.w1 = nn.Linear(width, hidden, bias=False)
      block.feed_forward.w3 = nn.Linear(width, hidden, bias=False)
      block.feed_forward.w2 = nn.Linear(hidden, width, bias=False)
      block.attention_norm = nn.RMSNorm(width, eps=1e-5)
      block.ffn_norm = nn.RMSNorm(width, eps=1e-5)
      self.layers.append(block)
    self.norm = nn.RMSNorm(width, eps=1e-5)
    self.output = nn.Linear(width, vocab, bias=False)
    with torch.no_grad():
      for p in self.parameters():
        p.copy_(p + 0.2 * torch.randn_like(p))

  def forward(self, tokens, labels):   # (B, T) targets, (B,) -> logits (B, T, V)
    x = torch.cat([self.cls_embedding.embedding_table(labels)[:, None],
                   self.tok_embeddings(tokens[:, :-1])], 1)
    x = x + self.positional_embedding[:x.shape[1]]
    b, t, w = x.shape
    for blk in self.layers:
      q, k, v = blk.attention.wqkv(blk.attention_norm(x)).split(w, -1)
      q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in (q, k, v))
      a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + blk.attention.wo(a.transpose(1, 2).reshape(b, t, w))
      h = blk.ffn_norm(x)
      x = x + blk.feed_forward.w2(F.silu(blk.feed_forward.w1(h)) * blk.feed_forward.w3(h))
    return self.output(self.norm(x))


def test_gpt_import_matches_reference_logits_and_round_trips(tmp_path):
  torch.manual_seed(5)
  ref = TGPT(vocab=96, width=64, layers=2, heads=4, classes=10, tokens=16).eval()
  sd = {k: v.clone() for k, v in ref.state_dict().items()}
  src = str(tmp_path / "GPT_tiny.pt")
  torch.save({"model": sd, "steps": 77}, src)
  recipe = tmp_path / "gpt_tiny.py"
  recipe.write_text("from gigatok_jax import config\n"
                    "def get_config(variant=''):\n"
                    "  c = config.with_variant(config.gpt_config('B'), 'tiny', "
                    "tiny=config.gpt_tiny_overrides)\n"
                    "  c.model.heads = 4\n  return c\n")
  out = str(tmp_path / "gpt")
  release.import_checkpoint(src, out, recipe=str(recipe), tokenizer_workdir=str(tmp_path / "tok"))
  config = runs.read_config(out)
  assert (config.model.vocab_size, config.model.num_tokens, config.model.num_classes) == (96, 16, 10)
  assert config.tokenizer.workdir == str(tmp_path / "tok")
  gpt = inference.load(config, out, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  params, step = gpt.params, gpt.step
  assert step == 77
  tokens = torch.randint(0, 96, (3, 16))
  labels = torch.tensor([0, 4, 10])                              # 10 = the null class
  with torch.no_grad():
    want = ref(tokens, labels).numpy()
  got = gpt.model(params)(jnp.asarray(tokens.numpy()), jnp.asarray(labels.numpy()))
  assert_close(got, want, 1e-4, "imported GPT logits")
  rules = conv.gpt_rules(tree_names.flat_shapes(params))
  back = conv.to_torch(rules, tree_names.flatten(jax.device_get(params)))
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_converted_run_reconstructs_and_starts_training(released, imported, tmp_path):
  """The converted directory works as a run: reconstruct; a fresh training state takes its weights
  (init_from, or the converted workdir itself), at step 0 with fresh optimizer states."""
  from gigatok_jax.config import validate
  from gigatok_jax.modes import reconstruct
  from gigatok_jax.train.tokenizer import TokenizerTask
  config = runs.read_config(imported)
  result = reconstruct.run(config, imported, devices=jax.devices()[:1])
  assert result["step"] == 1234
  assert os.path.isfile(os.path.join(imported, "reconstruct", "grid_00001234.png"))

  config = config_lib.load_recipe(released["recipe"])
  config.init_from = imported
  config.optim.ema_decay = 0.999
  config.mesh.data = 1
  validate.validate(config, num_devices=1, check_data=False)
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  fresh = task.init_state()
  for workdir, init_from in ((str(tmp_path / "ft"), imported), (imported, "")):
    state = runs.training_state(task, workdir, init_from=init_from).state
    assert int(state.step) == 0
    sd = released["sd"]
    np.testing.assert_array_equal(np.asarray(state.gen_params["quantize"]["embedding"]),
                                  sd["quantize.embedding.weight"].numpy())
    np.testing.assert_array_equal(np.asarray(state.ema_params["quantize"]["embedding"]),
                                  sd["quantize.embedding.weight"].numpy())
    disc_w = released["disc"].main[0].weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(state.disc_params["convs"][0]["kernel"]), disc_w)
    for a, b in zip(jax.tree.leaves(state.gen_opt), jax.tree.leaves(fresh.gen_opt)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))    # fresh optimizer states
  assert runs.training_state(task, str(tmp_path / "plain")).source == "random"   # no weights: init
  config.init_from = str(tmp_path / "nothing")
  with pytest.raises(ConfigError, match="init_from"):
    validate.validate(config, num_devices=1, check_data=False)
  gpt = load_recipe("gpt_b", "tiny")
  gpt.init_from = imported
  with pytest.raises(ConfigError, match="holds tokenizer weights"):
    validate.validate(gpt, num_devices=1, check_data=False)


def test_cli_module_reports_user_errors_in_one_line(tmp_path):
  import subprocess
  import sys
  from helpers import REPO, subprocess_env
  proc = subprocess.run([sys.executable, "-m", "gigatok_jax.convert",
                         f"--src={tmp_path}/missing.pt", f"--out={tmp_path}/run"], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == f"error: checkpoint file not found: {tmp_path}/missing.pt"
  assert not os.path.exists(tmp_path / "run")
