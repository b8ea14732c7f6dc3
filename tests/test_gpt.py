"""GPT model and sampler: parameter counts, KV-cache decoding, sampling semantics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gigatok_jax import config as config_lib
from gigatok_jax.models import gpt as gpt_lib
from gigatok_jax.models import sampler as sampler_lib
from gigatok_jax.models.sampler import SamplingSettings, filter_logits, generate, guidance_scale
from helpers import load_recipe


@pytest.mark.parametrize("name, expected", [("gpt_b", 111.1e6), ("gpt_l", 343e6),
                                            ("gpt_xl", 775e6), ("gpt_xxl", 1.4e9)])
def test_recipe_parameter_counts(name, expected):
  """docs/spec.md §4.1 sizes within 1% (vocabulary 16384, 256 tokens, 1000 classes), without allocating."""
  c = load_recipe(name)
  assert (c.model.vocab_size, c.model.num_tokens, c.model.num_classes) == (16384, 256, 1000)
  model = nnx.eval_shape(lambda: gpt_lib.GPT(c.model, rngs=nnx.Rngs(0)))
  n = gpt_lib.count_params(nnx.state(model, nnx.Param))
  assert abs(n / expected - 1) < 0.01, n


def test_gpt_b_matches_reference_layout_exactly():
  """Every tensor of the reference GPT-B state dict (layouts section 2) has its counterpart."""
  c = load_recipe("gpt_b")
  model = nnx.eval_shape(lambda: gpt_lib.GPT(c.model, rngs=nnx.Rngs(0)))
  p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert p["tok_embeddings"].shape == (16384, 768)
  assert p["cls_embedding"].shape == (1001, 768)
  assert p["positional_embedding"].shape == (257, 768)
  layer = p["layers"][0]
  assert layer["attention"]["wqkv"].shape == (768, 3, 12, 64)
  assert layer["feed_forward"]["w1"]["kernel"].shape == (768, 2048)
  assert "bias" not in layer["feed_forward"]["w1"] or layer["feed_forward"]["w1"]["bias"] is None
  assert gpt_lib.count_params(p) == 111_085_824


def _tiny(position="learned_1d", **overrides):
  c = config_lib.gpt_tiny_overrides(config_lib.gpt_config("B", position))
  c.model.update(overrides)
  return c.model


@functools.lru_cache(maxsize=None)
def _model(position="learned_1d"):
  cfg = _tiny(position)
  model = gpt_lib.GPT(cfg, rngs=nnx.Rngs(0))
  # The output head starts at zero (reference init); give it values so logits differ per token.
  model.output[...] = 0.5 * jax.random.normal(jax.random.key(1), model.output.shape)
  return model


@pytest.mark.parametrize("position", ["learned_1d", "rope_2d"])
def test_kv_cache_decoding_matches_full_forward(position):
  model = _model(position)
  t = model.num_tokens
  tokens = jax.random.randint(jax.random.key(2), (3, t), 0, model.cfg.vocab_size)
  labels = jnp.array([0, 5, model.num_classes])
  full = model(tokens, labels)                                   # (3, T, V)
  cache = model.init_cache(3)
  step_logits, cache = model.decode(model.embed(labels, None), cache, 0)
  outs = [step_logits]
  for i in range(t - 1):
    step_logits, cache = model.decode(model.embed(None, tokens[:, i:i + 1]), cache, i + 1)
    outs.append(step_logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5, rtol=1e-5)
  # A multi-position prefill through the cache agrees too.
  prefill, _ = model.decode(model.embed(labels, tokens[:, :4]), model.init_cache(3), 0)
  np.testing.assert_allclose(prefill, full[:, :5], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned_1d", "rope_2d"])
def test_xla_attention_core_matches_the_einsum_core(position):
  """model.attention='xla' (jax.nn.dot_product_attention: what GPUs and TPUs run, and what
  --mode=aot traces) and 'einsum' (the CPU default) give the same logits and gradients."""
  assert gpt_lib.attention_core("auto") == "einsum"              # this CPU backend
  models = {core: gpt_lib.GPT(_tiny(position, attention=core), rngs=nnx.Rngs(3))
            for core in ("einsum", "xla")}
  head = 0.5 * jax.random.normal(jax.random.key(1), models["xla"].output.shape)
  for m in models.values():
    m.output[...] = head                       # the reference init is zero: flat logits otherwise
  tokens = jax.random.randint(jax.random.key(2), (2, models["xla"].num_tokens), 0, 64)
  labels = jnp.array([1, 4])

  def loss(model):
    return jnp.mean(jnp.square(model(tokens, labels)))
  out = {core: jax.jit(nnx.value_and_grad(loss))(m) for core, m in models.items()}
  assert float(out["xla"][0]) > 0.01
  np.testing.assert_allclose(out["xla"][0], out["einsum"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out["xla"][1]), jax.tree.leaves(out["einsum"][1])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
  assert float(jnp.abs(out["xla"][1].layers[0].attention.wqkv[...]).max()) > 1e-4
  with pytest.raises(ValueError, match="model.attention must be one of"):
    gpt_lib.GPT(_tiny(position, attention="flash"), rngs=nnx.Rngs(0))


def test_rope_2d_table_layout():
  table = gpt_lib.rope_2d_table(16, 8)                         # 4 x 4 grid, head_dim 8
  assert table.shape == (17, 4, 2)
  np.testing.assert_array_equal(table[0], 0.0)                  # class position: zeros
  # token (row 1, col 2) = index 1 + 6: first half of the pairs rotate by the row, the rest by col.
  freqs = 1.0 / 10000 ** (np.arange(0, 4, 2) / 4)
  np.testing.assert_allclose(table[1 + 6, :2, 0], np.cos(1 * freqs), rtol=1e-6)
  np.testing.assert_allclose(table[1 + 6, 2:, 1], np.sin(2 * freqs), rtol=1e-6)


def test_dropout_only_with_a_key():
  model = _model()
  tokens = jnp.zeros((2, model.num_tokens), jnp.int32)
  labels = jnp.array([1, 2])
  a, b = model(tokens, labels), model(tokens, labels)
  np.testing.assert_array_equal(a, b)
  c = model(tokens, labels, dropout_key=jax.random.key(0))
  assert not np.allclose(a, c)
  dropped = model.drop_labels(jnp.zeros((10_000,), jnp.int32), jax.random.key(3))
  assert abs(float(jnp.mean(dropped == model.num_classes)) - 0.1) < 0.015


def _sample(labels, settings, key=0, guidance=None, position="learned_1d"):
  model = _model(position)
  graph, params = nnx.split(model)

  @jax.jit
  def run(params, labels, key):
    return generate(nnx.merge(graph, params), labels, key, settings, guidance=guidance)
  return np.asarray(run(params, jnp.asarray(labels), jax.random.key(key)))


def test_greedy_sampling_is_deterministic_and_follows_the_argmax():
  model = _model()
  greedy = SamplingSettings(temperature=0.0)
  a = _sample([0, 3, 7], greedy, key=0)
  b = _sample([0, 3, 7], greedy, key=123)
  np.testing.assert_array_equal(a, b)
  # Greedy tokens are the argmax of the teacher-forced logits of the sampled sequence itself.
  logits = model(jnp.asarray(a), jnp.array([0, 3, 7]))
  np.testing.assert_array_equal(np.argmax(logits, -1), a)
  # top_k=1 is greedy too, whatever the temperature.
  np.testing.assert_array_equal(_sample([0, 3, 7], SamplingSettings(top_k=1), key=5), a)


def test_sampling_is_reproducible_per_key_and_varies_across_keys():
  s = SamplingSettings(temperature=1.0)
  np.testing.assert_array_equal(_sample([1, 2], s, key=4), _sample([1, 2], s, key=4))
  assert not np.array_equal(_sample([1, 2], s, key=4), _sample([1, 2], s, key=5))


def test_cfg_scale_one_equals_conditional_sampling():
  cond = _sample([2, 4, 6], SamplingSettings(temperature=1.0), key=9, guidance=False)
  guided = _sample([2, 4, 6], SamplingSettings(temperature=1.0, cfg_scale=1.0), key=9,
                   guidance=True)
  np.testing.assert_array_equal(guided, cond)


def test_unconditional_branch_uses_the_null_class():
  """Scale 0 keeps only the unconditional logits: the samples are those of the null class."""
  model = _model()
  null = model.num_classes
  uncond = _sample([null, null], SamplingSettings(temperature=0.0), guidance=False)
  scale0 = _sample([3, 8], SamplingSettings(temperature=0.0, cfg_scale=0.0))
  np.testing.assert_array_equal(scale0, uncond)
  # And guidance changes the samples when the scale is not 1.
  assert not np.array_equal(_sample([3, 8], SamplingSettings(temperature=0.0, cfg_scale=4.0)),
                            _sample([3, 8], SamplingSettings(temperature=0.0)))


def test_step_schedule_guides_only_after_the_fraction():
  s = SamplingSettings(cfg_scale=3.0, cfg_schedule="step", cfg_step_fraction=0.18)
  scales = [float(guidance_scale(s, jnp.int32(i), 256)) for i in (0, 45, 46, 255)]
  assert scales == [1.0, 1.0, 3.0, 3.0]
  # With the step schedule the first 18% of tokens equal unguided sampling exactly.
  model = _model()
  n_free = int(0.18 * model.num_tokens)
  plain = _sample([1, 9], SamplingSettings(temperature=0.0))
  stepped = _sample([1, 9], SamplingSettings(temperature=0.0, cfg_scale=8.0, cfg_schedule="step"))
  np.testing.assert_array_equal(stepped[:, :n_free], plain[:, :n_free])


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  k2 = filter_logits(logits, 2, 1.0)
  assert np.isfinite(np.asarray(k2)).tolist() == [[True, True, False, False]]
  p = filter_logits(logits, 0, 0.7)   # 0.5 + 0.3 reaches 0.7: the nucleus is the first two
  assert np.isfinite(np.asarray(p)).tolist() == [[True, True, False, False]]
  p1 = filter_logits(logits, 0, 0.4)  # the most likely token always stays
  assert np.isfinite(np.asarray(p1)).tolist() == [[True, False, False, False]]


def _gpt_task_config(**mesh):
  c = load_recipe("gpt_b", "tiny")
  c.mesh.update(mesh)
  return c


def test_sharded_gpt_step_matches_one_device():
  """FSDP x tensor x data on 8 devices computes the same step as one device; weights are sharded."""
  from gigatok_jax import parallel
  from gigatok_jax.train.gpt import GPTTask
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, 512, (8, 16)).astype(np.int32),
           "label": rng.integers(0, 10, (8,)).astype(np.int32)}
  results = []
  for mesh_cfg, devices in ((dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                            (dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])):
    config = _gpt_task_config(**mesh_cfg)
    task = GPTTask(config, parallel.make_mesh(config.mesh, devices))
    state = task.init_state()
    with jax.set_mesh(task.mesh):
      state, metrics = task.jitted_train_step()(state, parallel.global_batch(batch, task.mesh, task.rules))
    results.append((state, jax.device_get(metrics)))
  (s1, m1), (s8, m8) = results
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  wqkv = s8.params["layers"][0]["attention"]["wqkv"]
  assert wqkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
  assert s8.params["output"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Adam moments follow their parameters.
  mu = s8.opt[1][0].mu["layers"][0]["attention"]["wqkv"]
  assert mu.sharding.spec == wqkv.sharding.spec


def test_bf16_compute_keeps_float32_masters():
  from gigatok_jax import parallel
  from gigatok_jax.train.gpt import GPTTask
  c = _gpt_task_config(data=1)
  c.model.dtype = "bfloat16"
  task = GPTTask(c, parallel.make_mesh(c.mesh, jax.devices()[:1]))
  state = task.init_state()
  batch = {"tokens": np.zeros((8, 16), np.int32), "label": np.arange(8, dtype=np.int32)}
  with jax.set_mesh(task.mesh):
    state, metrics = task.jitted_train_step()(state, parallel.global_batch(batch, task.mesh, task.rules))
  assert state.params["tok_embeddings"].dtype == np.float32
  assert np.isfinite(float(metrics["loss"]))


def test_hidden_states_for_linear_probing():
  model = _model()
  tokens = jax.random.randint(jax.random.key(7), (2, model.num_tokens), 0, model.cfg.vocab_size)
  null = jnp.full((2,), model.num_classes)
  last = model.hidden_states(tokens, null, len(model.layers))          # (B, T, W)
  logits = jnp.einsum("btw,wv->btv", model.norm(last), model.output[...])
  np.testing.assert_allclose(logits, model(tokens, null), atol=1e-5)
  middle = model.hidden_states(tokens, null, len(model.layers) // 2)
  assert middle.shape == last.shape and not np.allclose(middle, last)
  with pytest.raises(ValueError):
    model.hidden_states(tokens, null, 0)


def test_scanned_blocks_match_unrolled():
  """`model.scan_layers`: same logits, dropout and gradients in training, same probe features."""
  tokens = jax.random.randint(jax.random.key(7), (2, 16), 0, 64)
  labels = jnp.array([1, 2])
  results = []
  for scan in (False, True):
    cfg = _tiny(scan_layers=scan, remat="full", num_tokens=16, vocab_size=64)
    graph, params = nnx.split(gpt_lib.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    params["output"][...] = 0.5 * jax.random.normal(jax.random.key(1), params["output"].shape)

    @jax.jit
    def run(p):
      def loss(p):
        logits = nnx.merge(graph, p)(tokens, labels, dropout_key=jax.random.key(3))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
      return logits, grads, nnx.merge(graph, p).hidden_states(tokens, labels, 1)
    results.append(run(params))
  (l0, g0, h0), (l1, g1, h1) = results
  np.testing.assert_allclose(l0, l1, atol=1e-5)
  np.testing.assert_allclose(h0, h1, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_cache_chunks_by_length_and_backend():
  assert [sampler_lib.cache_chunks(t) for t in (16, 127, 128, 255, 256, 1024)] == [1, 1, 2, 3, 4, 4]
  assert sampler_lib.cache_chunks(256, platform="gpu") == 1          # measured on CPU only
  assert sampler_lib.cache_chunks(16, 3) == 3 and sampler_lib.cache_chunks(2, 8) == 2
  model = _model()                                                   # 16 tokens, 3 chunks of 6
  cache = model.init_cache(2, chunks=3)
  x = model.embed(jnp.array([1, 2]), None)
  with pytest.raises(ValueError, match=r"positions 6..6 are not inside cache chunk 0"):
    model.decode(x, cache, 6)
  with pytest.raises(ValueError, match=r"positions 5..6 are not inside cache chunk 0"):
    model.decode(model.embed(None, jnp.zeros((2, 2), jnp.int32)), cache, 5)
  assert model.decode(x, cache, 6, chunk=1)[0].shape == (2, 1, model.cfg.vocab_size)


@pytest.mark.parametrize("chunks", [2, 3, 16])
def test_chunked_cache_samples_what_one_chunk_samples(chunks):
  """generate with the KV cache in chunks (each step reading only the filled ones; 3 does not
  divide the 16 tokens, 16 is one position per chunk) gives the tokens of a one-chunk cache, and
  the chunked decode's logits equal the teacher-forced ones."""
  model = _model()
  labels = jnp.array([1, 7, 3])
  settings = SamplingSettings(cfg_scale=2.0, cfg_schedule="step", temperature=1.0, top_k=20)
  one = jax.jit(lambda key: generate(model, labels, key, settings, chunks=1))
  many = jax.jit(lambda key: generate(model, labels, key, settings, chunks=chunks))
  for seed in range(3):
    np.testing.assert_array_equal(many(jax.random.key(seed)), one(jax.random.key(seed)))
  t = model.num_tokens
  tokens = jax.random.randint(jax.random.key(2), (3, t), 0, model.cfg.vocab_size)
  full = model(tokens, labels)
  size = gpt_lib.chunk_size(t, chunks)
  first, cache = model.decode(model.embed(labels, None), model.init_cache(3, chunks=chunks), 0)
  outs = [first]
  for i in range(t - 1):
    step_logits, cache = model.decode(model.embed(None, tokens[:, i:i + 1]), cache, i + 1,
                                      chunk=(i + 1) // size)
    outs.append(step_logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5, rtol=1e-5)
