"""The `model.quantizer` choices besides GigaTok's VQ (tests/test_quantizer.py): IBQ and FSQ, their
config checks, and the codebook similarity sharded over a CPU mesh."""

import itertools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from gigatok_jax import parallel
from gigatok_jax.config import validate
from gigatok_jax.config.common import DEFAULT_AXIS_RULES
from gigatok_jax.errors import ConfigError
from gigatok_jax.models import quantizer as q
from helpers import load_recipe


def _ibq(k=64, d=8, seed=0):
  return q.IndexBackpropQuantizer(k, d, rngs=nnx.Rngs(seed))


def test_ibq_forward_is_the_argmax_row_and_its_gradient_reaches_every_row():
  quant = _ibq()
  z = jax.random.normal(jax.random.key(1), (2, 5, 8))
  out = quant(z, with_entropy=True)
  e = np.asarray(quant.embedding[...])
  want = np.argmax(np.asarray(z).reshape(-1, 8) @ e.T, axis=-1).reshape(2, 5)
  np.testing.assert_array_equal(out.indices, want)
  np.testing.assert_allclose(out.quantized, e[want], rtol=0, atol=1e-6)

  def loss(module, z):
    o = module(z, with_entropy=True)
    return jnp.sum(o.quantized * 3.0) + o.vq_loss + o.commit_loss + o.entropy_loss

  grads, gz = nnx.grad(loss, argnums=(0, 1))(quant, z)
  g = np.asarray(grads["embedding"][...])
  # Ten tokens select at most ten rows; the softmax path reaches all 64.
  assert np.all(np.abs(g).sum(axis=1) > 0), np.sum(np.abs(g).sum(axis=1) == 0)
  assert np.all(np.isfinite(gz)) and np.abs(np.asarray(gz)).sum() > 0


def test_vq_gradient_reaches_only_the_selected_rows():
  """The contrast that makes IBQ's test meaningful: plain VQ updates only the chosen codes."""
  quant = q.VectorQuantizer(64, 8, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(1), (2, 5, 8))
  grads = nnx.grad(lambda m: m(z).vq_loss)(quant)
  touched = np.abs(np.asarray(grads["embedding"][...])).sum(axis=1) > 0
  assert 0 < touched.sum() <= 10


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 3), (3, 4)])
def test_fsq_round_trip_is_exact_for_every_code(levels):
  quant = q.FiniteScalarQuantizer(levels)
  codes = jnp.arange(quant.codebook_size, dtype=jnp.int32)
  values = quant.lookup(codes)                                   # (K, D) in [-1, 1]
  assert float(jnp.max(jnp.abs(values))) <= 1.0
  # Every grid value is reachable: the inverse of the bound maps a point of its rounding cell
  # (0.9 x the grid value: inside the open range of tanh, same nearest integer) to a latent.
  half = np.floor(np.asarray(levels) / 2.0)
  bounded = np.asarray(values, np.float64) * half * 0.9
  levels_f = np.asarray(levels, np.float64)
  half_l = (levels_f - 1) * (1 - quant.eps) / 2
  offset = np.where(levels_f % 2 == 0, 0.5, 0.0)
  latent = np.arctanh((bounded + offset) / half_l) - np.arctanh(offset / half_l)
  out = quant(jnp.asarray(latent, jnp.float32)[None])
  np.testing.assert_array_equal(np.asarray(out.indices[0]), np.asarray(codes))
  np.testing.assert_array_equal(np.asarray(out.quantized[0]), np.asarray(values))
  digits = sorted(set(itertools.product(*[range(l) for l in levels])))
  assert len(digits) == quant.codebook_size


def test_fsq_rounds_with_a_straight_through_gradient():
  quant = q.FiniteScalarQuantizer((8, 5, 5, 5))
  z = jax.random.normal(jax.random.key(0), (3, 7, 4)) * 3
  out = quant(z)
  assert out.indices.shape == (3, 7) and int(out.indices.max()) < 1000
  np.testing.assert_array_equal(out.quantized, quant.lookup(out.indices))
  g = jax.grad(lambda z: jnp.sum(quant(z).quantized))(z)
  np.testing.assert_allclose(g, jax.grad(lambda z: jnp.sum(quant._bound(z) / jnp.floor(
      jnp.asarray(quant.levels, jnp.float32) / 2)))(z), rtol=1e-6)


@pytest.mark.parametrize("key,value,culprit", [
    ("quantizer", "lfq", "model.quantizer"),
    ("fsq_levels", (8, 2), "model.fsq_levels"),
    ("code_dim", 3, "model.code_dim"),
    ("codebook_size", 999, "model.codebook_size"),
])
def test_fsq_config_errors_name_the_key(key, value, culprit):
  config = load_recipe("tokenizer_ss", "tiny")
  config.model.update(quantizer="fsq", fsq_levels=(8, 5, 5, 5), code_dim=4, codebook_size=1000)
  validate.check_quantizer(config.model)
  config.model[key] = value
  with pytest.raises(ConfigError, match=culprit):
    validate.check_quantizer(config.model)


def test_levels_without_fsq_are_refused():
  config = load_recipe("tokenizer_ss", "tiny")
  config.model.fsq_levels = (8, 8)
  with pytest.raises(ConfigError, match="model.fsq_levels"):
    validate.check_quantizer(config.model)


@pytest.mark.parametrize("kind", ["ibq", "vq"])
def test_a_2_18_codebook_sharded_over_four_devices_equals_the_unsharded_result(kind):
  """2^18 x 256 codebook over tensor=4 (default rules): the similarity is computed per shard of
  codes (the compiled program never gathers the codebook) and indices, values and losses equal one
  device's."""
  k, d = 2 ** 18, 256
  cls = q.IndexBackpropQuantizer if kind == "ibq" else q.VectorQuantizer
  quant = cls(k, d, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(3), (2, 4, d))
  graphdef, state = nnx.split(quant)

  def run(state, z):
    out = nnx.merge(graphdef, state)(z, with_entropy=True)
    return out.indices, out.quantized, out.vq_loss, out.commit_loss, out.entropy_loss

  want = jax.jit(run)(state, z)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=4)),
                            jax.devices()[:4])
  spec = parallel.logical_to_spec(("codebook", "code_dim"), DEFAULT_AXIS_RULES)
  assert spec == P(("tensor", "fsdp"), None)
  sharded_state = jax.device_put(state, NamedSharding(mesh, parallel._fits(spec, (k, d), mesh)))

  def constrained(state, z):
    with q.codebook_sharding(parallel.similarity_spec(DEFAULT_AXIS_RULES)):
      return run(state, z)

  with jax.set_mesh(mesh):
    fn = jax.jit(constrained)
    got = fn(sharded_state, z)
    hlo = fn.lower(sharded_state, z).compile().as_text()
  assert sharded_state["embedding"][...].addressable_shards[0].data.shape == (k // 4, d)
  assert not re.search(rf"f32\[{k},{d}\]\S*\s+all-gather", hlo), "the codebook was gathered"
  assert not re.search(rf"f32\[8,{k}\]\S*\s+all-gather", hlo), "the similarity was gathered"
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)
  for a, b in zip(got[2:], want[2:]):
    np.testing.assert_allclose(a, b, rtol=1e-5)
