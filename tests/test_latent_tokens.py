"""Token count decoupled from the grid (`model.num_latent_tokens`, issue 22's first item).

The encoder's queries are the first N regions of the multi-level pooling series 1 + 1 + 2 + ... +
grid^2; the decoder's queries (dec_query_init='unpool') average the tokens covering each cell. These
tests pin the region rule, the pooled values, the model's shapes and gradients, the config checks and
how official files (always one token per cell) import and export.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gigatok_jax import runs
from gigatok_jax.config import validate
from gigatok_jax.convert import gigatok, release
from gigatok_jax.errors import CheckpointError, ConfigError
from gigatok_jax.models import qformer
from gigatok_jax.models.tokenizer import Tokenizer, num_tokens
from gigatok_jax.tree_names import flatten
from helpers import load_recipe


def test_the_region_series_and_its_limits():
  assert [qformer.max_latent_tokens(g, g) for g in (2, 4, 8, 16)] == [8, 32, 128, 512]
  # 32 tokens of a 16 x 16 grid: global, then 1x1, 1x2, 2x2, 2x4, 4x4 groups (1+1+2+4+8+16).
  regions = qformer._pool_regions(16, 16, 32)
  assert regions[0] == regions[1] == (0, 0, 16, 16)
  assert regions[2:4] == [(0, 0, 16, 8), (0, 8, 16, 8)]
  assert regions[16] == (0, 0, 4, 4) and regions[31] == (12, 12, 4, 4)
  # 256 (the reference count) stops after the 8 x 16 group; 512 ends with every cell.
  assert qformer._pool_regions(16, 16, 256)[-1] == (14, 15, 2, 1)
  assert qformer._pool_regions(16, 16, 512)[-1] == (15, 15, 1, 1)
  # 100 of an 8 x 8 grid: the 64 of 1+...+32, then the first 36 cells row-major.
  assert qformer._pool_regions(8, 8, 100)[64:] == [(r, c, 1, 1) for r in range(8)
                                                   for c in range(8)][:36]
  for bad in (0, 129):
    with pytest.raises(ValueError, match="8 x 8 grid pools into 1 to 128"):
      qformer._pool_regions(8, 8, bad)


@pytest.mark.parametrize("n", [1, 32, 64, 100, 128])
def test_pooled_tokens_are_region_means_and_unpooling_keeps_the_image_mean(n):
  x = jax.random.normal(jax.random.key(n), (2, 8, 8, 3))
  pooled = np.asarray(qformer.multi_level_pool(x, n))
  assert pooled.shape == (2, n, 3)
  for t, (top, left, h, w) in enumerate(qformer._pool_regions(8, 8, n)):
    np.testing.assert_allclose(pooled[:, t], np.asarray(x[:, top:top + h, left:left + w]).mean((1, 2)),
                               atol=1e-6)
  u = qformer.unpool_matrix(8, 8, n)
  assert u.shape == (64, n)
  np.testing.assert_allclose(u.sum(1), 1.0, rtol=1e-6)
  out = qformer.multi_level_unpool(jnp.asarray(pooled), 8, 8)
  assert out.shape == (2, 8, 8, 3)
  if n in (1, 32, 64, 128):  # whole groups: every level tiles the grid, so the mean is kept
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)
  # A cell of the partial 100-token group averages over one more region than the cells outside it.
  if n == 100:
    assert u[0].max() == pytest.approx(1 / 8) and u[63].max() == pytest.approx(1 / 7)


@pytest.mark.parametrize("n,query_init", [(32, "unpool"), (128, "first_token"), (100, "unpool")])
def test_the_tokenizer_encodes_to_n_tokens_and_trains_them_all(n, query_init):
  c = load_recipe("demo", "tiny")
  c.model.num_latent_tokens, c.model.dec_query_init = n, query_init
  validate.check_model(c.model, c.data.image_size)
  assert num_tokens(c.model, c.data.image_size) == n
  model = Tokenizer(c.model, image_size=64, rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
  codes = model.encode(images)
  assert codes.shape == (2, n) and codes.dtype == jnp.int32
  assert model.decode_indices(codes).shape == (2, 64, 64, 3)
  assert model.s2to1encoder.latent_token_positional_embedding.shape[0] == n
  assert model.s1to2decoder.latent_token_positional_embedding.shape[0] == n
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    out = nnx.merge(graph, p, rest)(images)
    return jnp.mean((out.reconstruction - images) ** 2) + out.vq_loss + out.commit_loss
  grads = jax.grad(loss)(params)
  for side in ("s2to1encoder", "s1to2decoder"):
    g = np.asarray(grads[side]["latent_token_positional_embedding"][...])
    assert g.shape[0] == n and np.all(np.abs(g).sum(1) > 0), side   # every token position learns


def test_config_checks_name_the_key():
  c = load_recipe("demo", "tiny")           # 64 px, 4 CNN levels: an 8 x 8 grid
  c.model.num_latent_tokens = 129
  with pytest.raises(ConfigError, match=r"model.num_latent_tokens.*at most 128"):
    validate.check_model(c.model, c.data.image_size)
  c.model.num_latent_tokens = -1
  with pytest.raises(ConfigError, match="model.num_latent_tokens"):
    validate.check_model(c.model, c.data.image_size)
  c.model.kind, c.model.dec_query_init, c.model.num_latent_tokens = "2d", "first_token", 32
  with pytest.raises(ConfigError, match="2d tokenizer has one token per grid cell"):
    validate.check_model(c.model, c.data.image_size)
  c.model.num_latent_tokens = 0
  validate.check_model(c.model, c.data.image_size)
  assert num_tokens(c.model, c.data.image_size) == 64


def _reference_state_dict(model_config):
  """The state dict, in the reference layout, of a fresh tokenizer of `model_config` at 64 px."""
  model = Tokenizer(model_config, image_size=64, rngs=nnx.Rngs(0))
  flat = {k: np.asarray(v) for k, v in
          flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
  return gigatok.to_torch(gigatok.tokenizer_rules({k: v.shape for k, v in flat.items()}), flat)


def test_official_layout_files_carry_their_token_count_and_export_refuses_other_counts(tmp_path):
  c = load_recipe("demo", "tiny")
  c.model.update(num_latent_tokens=32, cnn_norm_groups=32, dec_query_init="first_token")
  assert release.tokenizer_dims(_reference_state_dict(c.model))["num_latent_tokens"] == 32
  c.model.num_latent_tokens = 0              # one token per cell: the reference's 0
  assert release.tokenizer_dims(_reference_state_dict(c.model))["num_latent_tokens"] == 0
  c.model.num_latent_tokens = 32
  workdir = str(tmp_path / "run")
  runs.write_config(c, workdir)
  with pytest.raises(CheckpointError, match="model.num_latent_tokens=32 has no counterpart"):
    release.export_run(workdir, str(tmp_path / "out.safetensors"), log=lambda *_: None)


@pytest.mark.parametrize("variant,tokens,width", [("", 32, 1024), ("64", 64, 768), ("128", 128, 512)])
def test_titok_style_recipes_and_their_tiny_variants(variant, tokens, width):
  for name, size in ((variant, 256), ((variant + "_tiny").lstrip("_"), 64)):
    config = load_recipe("tokenizer_titok", name)
    validate.validate(config, num_devices=1, check_data=False)
    assert config.data.image_size == size
    assert num_tokens(config.model, config.data.image_size) == tokens
  assert load_recipe("tokenizer_titok", variant).model.enc_width == width
