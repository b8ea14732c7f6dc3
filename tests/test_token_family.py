"""The 1D token family end to end on tiny models: a tokenizer with another quantizer and a token
count off the grid trains, resumes bit-identically, and its codes go through extraction -> GPT
training -> sampling (the chain of tests/test_ar_pipeline.py, which covers GigaTok's VQ)."""

import os

import jax
import numpy as np
import pytest

from gigatok_jax import checkpointing, inference, parallel
from gigatok_jax.api.tokenizer import Tokenizer
from gigatok_jax.config import validate
from gigatok_jax.errors import ConfigError
from gigatok_jax.modes import eval_tokenizer as tokenizer_eval
from gigatok_jax.modes import extract_codes, reconstruct
from gigatok_jax.modes import sample as sample_images
from gigatok_jax.train import loop
from helpers import load_recipe

ONE_DEVICE = jax.devices()[:1]

# quantizer -> model overrides; 12 tokens pool a 4 x 4 grid (1 + 1 + 2 + 4 + 4 of the 16 cells).
FAMILY = {
    "fsq": dict(quantizer="fsq", fsq_levels=(4, 4, 4, 4), code_dim=4, codebook_size=256,
                num_latent_tokens=12),
    "ibq": dict(quantizer="ibq", code_dim=16, codebook_size=256, num_latent_tokens=24),
    # FlexTok-style: FSQ and nested dropout over 16 tokens; the GPT models the first 8.
    "flextok": dict(quantizer="fsq", fsq_levels=(4, 4, 4, 4), code_dim=4, codebook_size=256,
                    num_latent_tokens=16, nested_dropout=(1, 2, 4, 8, 16)),
}
GPT_TOKENS = {"fsq": 12, "ibq": 24, "flextok": 8}


def tokenizer_config(kind, total_steps=3):
  c = load_recipe("demo_ar", "tokenizer")
  c.model.update(dict(enc_width=64, enc_layers=1, dec_width=64, dec_layers=1, distill_depth=1),
                 **FAMILY[kind])
  c.loss.entropy_weight = 0.02 if kind == "ibq" else 0.0
  c.total_steps = total_steps
  c.checkpoint_every_steps = 1
  c.image_every_steps = 100
  c.eval_num_images = 4
  c.global_batch_size = 8
  c.mesh.data = 1
  return c


def gpt_config(kind, tok_dir, codes_dir=""):
  c = load_recipe("demo_ar")
  c.model.update(dict(width=32, layers=2, heads=2,
                      num_tokens=GPT_TOKENS[kind]))
  c.tokenizer.workdir = tok_dir
  c.data.codes_path = codes_dir
  c.total_steps = 2
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 100
  c.global_batch_size = 8
  c.extract.batch_size = 16
  c.extract.max_images = 32
  c.sample.num_samples = 8
  c.sample.batch_size = 8               # one row per device of the 8-device test process
  c.sample.grid_images = 8
  return c


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flextok", "ibq"])   # 'fsq' (12 tokens): FSQ runs in flextok
def test_train_resume_extract_gpt_sample(kind, tmp_path):
  straight = loop.train(tokenizer_config(kind), str(tmp_path / "a"), progress=False,
                        devices=ONE_DEVICE)
  tok_dir = str(tmp_path / "b")
  loop.train(tokenizer_config(kind, 2), tok_dir, progress=False, devices=ONE_DEVICE)
  resumed = loop.train(tokenizer_config(kind), tok_dir, progress=False, devices=ONE_DEVICE)
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert checkpointing.Checkpointer(f"{tok_dir}/checkpoints", save_every_steps=1).latest_step() == 3

  tokens = FAMILY[kind]["num_latent_tokens"]
  tok = Tokenizer.load(tok_dir, devices=ONE_DEVICE)
  assert tok.num_tokens == tokens
  out = extract_codes.run(gpt_config(kind, tok_dir), str(tmp_path / "gpt"), progress=False)
  assert out["shards_written"] >= 1
  images = np.zeros((2, 32, 32, 3), np.uint8) + np.arange(32, dtype=np.uint8)[None, :, None, None]
  own = tok.encode(images)
  assert own.shape == (2, tokens) and own.max() < 256
  assert tok.decode(own).shape == (2, 32, 32, 3)

  if kind == "flextok":
    _check_prefix_decoding(tok, tok_dir, own, images)

  cfg = gpt_config(kind, tok_dir, out["output"])
  gpt_dir = str(tmp_path / "gpt")
  loop.train(cfg, gpt_dir, progress=False, devices=ONE_DEVICE)
  result = sample_images.run(cfg.copy_and_resolve_references(), gpt_dir, progress=False)
  data = np.load(result["npz"])["arr_0"]
  assert data.shape == (8, 32, 32, 3) and data.dtype == np.uint8


def _check_prefix_decoding(tok, tok_dir, codes, images):
  """Decoding from k tokens ignores the others; eval scores each trained length and plots them;
  reconstruct decodes from eval.num_tokens."""
  assert tok.prefix_lengths == (1, 2, 4, 8, 16)
  other = codes.copy()
  other[:, 4:] = (other[:, 4:] + 1) % 256
  np.testing.assert_array_equal(tok.decode(codes[:, :4]), tok.decode(other, num_tokens=4))
  assert not np.array_equal(tok.decode(codes[:, :4]), tok.decode(codes))
  np.testing.assert_array_equal(tok.reconstruct(images, num_tokens=4), tok.decode(codes[:, :4]))
  config = tokenizer_config("flextok")
  config.eval.update(num_images=8, batch_size=8)
  result = tokenizer_eval.run(config, tok_dir, progress=False, devices=ONE_DEVICE)
  assert [r["num_tokens"] for r in result["per_prefix"]] == [1, 2, 4, 8, 16]
  assert result["per_prefix"][-1]["psnr"] == result["psnr"]
  assert os.path.isfile(result["plot"]) and result["plot"].endswith(".png")
  from PIL import Image
  grid = np.asarray(Image.open(result["prefix_grid"]))
  assert grid.shape[0] == 2 + 6 * 34     # originals + 5 lengths, 32 px rows with 2 px padding
  config.eval.num_tokens = 4
  rec = reconstruct.run(config, tok_dir, devices=ONE_DEVICE)
  assert rec["tokens_decoded"] == 4 and rec["grid"].endswith("_4tokens.png")
  # Eval encodes once and decodes every prefix from the same tokens: the same outputs as a
  # separate pass per length.
  loaded = inference.load(config, tok_dir, parallel.make_mesh(config.mesh, ONE_DEVICE))
  x = images.astype(np.float32) / 127.5 - 1.0
  with jax.set_mesh(loaded.mesh):
    full, codes, parts = inference.reconstruct_prefixes_fn(loaded.spec, (1, 4))(loaded.params, x)
    one_pass, one_pass_codes = inference.reconstruct_fn(loaded.spec)(loaded.params, x)
    np.testing.assert_array_equal(codes, one_pass_codes)
    np.testing.assert_allclose(full, one_pass, atol=1e-6)
    for k, part in zip((1, 4), parts):
      np.testing.assert_allclose(part, inference.reconstruct_fn(loaded.spec, k)(loaded.params, x)[0],
                                 atol=1e-6)


def test_nested_dropout_config_errors_name_the_key():
  config = tokenizer_config("flextok")
  validate.check_nested_dropout(config.model, 16)
  for bad in [(0, 4), (4, 2), (1, 32)]:
    config.model.nested_dropout = bad
    with pytest.raises(ConfigError, match="model.nested_dropout"):
      validate.check_nested_dropout(config.model, 16)
  config.model.nested_dropout = ()
  with pytest.raises(ConfigError, match="eval.num_tokens"):
    validate.check_nested_dropout(config.model, 16, eval_tokens=4)


def test_nested_dropout_trains_the_mask_token_and_draws_lengths_per_image():
  from flax import nnx
  import jax.numpy as jnp
  from gigatok_jax.models.tokenizer import Tokenizer as Model
  config = tokenizer_config("flextok")
  model = Model(config.model, 32, rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  grads = nnx.grad(lambda m: jnp.mean(m(images, keep=jnp.array([2, 16])).reconstruction ** 2))(
      model)
  assert np.abs(np.asarray(grads["mask_token"][...])).sum() > 0
  full = model(images).reconstruction
  np.testing.assert_array_equal(model(images, keep=16).reconstruction, full)
  plain = tokenizer_config("fsq")
  with pytest.raises(ValueError, match="nested_dropout"):
    Model(plain.model, 32, rngs=nnx.Rngs(0))(images, keep=4)


@pytest.mark.slow
# tokenizer_titok's structure (32 tokens) and tokenizer_fsq's quantizer run in
# tests/test_latent_tokens.py and the chains above; two recipes here keep the suite under 20 min.
@pytest.mark.parametrize("recipe", ["tokenizer_ibq", "tokenizer_flextok"])
def test_each_family_recipe_trains_in_its_tiny_variant(recipe, tmp_path):
  """The paper-size recipes' `:tiny` variants (same quantizer, token count and nested dropout,
  small widths) run the real loop, and a reconstruction decodes from their tokens."""
  config = load_recipe(recipe, "tiny")
  config.total_steps = 2
  config.mesh.update(data=1, fsdp=1, tensor=1)
  state = loop.train(config, str(tmp_path), progress=False, devices=ONE_DEVICE)
  assert int(state.step) == 2
  tok = Tokenizer.load(str(tmp_path), devices=ONE_DEVICE)
  images = np.full((1, 64, 64, 3), 128, np.uint8)
  codes = tok.encode(images)
  assert codes.shape == (1, tok.num_tokens) and 0 <= codes.min() and codes.max() < tok.codebook_size
  if tok.prefix_lengths:
    assert tok.decode(codes[:, :2]).shape == (1, 64, 64, 3)


def test_the_tokens_plot_draws_one_point_per_length():
  from gigatok_jax import plots
  image = plots.tokens_plot([1, 2, 4, 8], [12.0, 13.5, 15.25, 15.0], y_label="PSNR (dB)", title="t")
  assert image.shape == (plots.HEIGHT, plots.WIDTH, 3) and image.dtype == np.uint8
  blue = np.all(image == (31, 119, 180), axis=-1)
  cols = np.flatnonzero(blue.any(axis=0))
  # The line spans the plot area from the first length to the last (log2 x axis).
  assert cols.min() <= plots.MARGIN_LEFT + 4 and cols.max() >= plots.WIDTH - plots.MARGIN_RIGHT - 4
  # The highest value (15.25 at 4 tokens) is the topmost blue pixel, two thirds of the way across.
  top_row = np.flatnonzero(blue.any(axis=1)).min()
  x_top = np.flatnonzero(blue[top_row]).mean()
  span = plots.WIDTH - plots.MARGIN_RIGHT - plots.MARGIN_LEFT
  assert abs(x_top - (plots.MARGIN_LEFT + 2 / 3 * span)) < 6
