"""Tokenizer architecture: parameter counts, structure, token order, quantizer statistics, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gigatok_jax import build, parallel
from gigatok_jax.modes import summary
from gigatok_jax.tree_names import flatten
from gigatok_jax.models import layer_layout, qformer, quantizer
from gigatok_jax.models.tokenizer import Tokenizer
from helpers import load_recipe

# Paper / README counts, projector included (docs/spec.md §2.3); the exact reference counts are in
# checkpoint_layouts.md 1.2 (136,073,227 / 232,399,627 / 621,637,131 / 2,893,970,443).
PAPER_COUNTS = {
    "tokenizer_ss": 136.1e6,
    "tokenizer_sb": 232.4e6,
    "tokenizer_bl": 621.6e6,
    "tokenizer_xlxxl": 2.894e9,
}
REFERENCE_EXACT = {
    "tokenizer_ss": 136_073_227,
    "tokenizer_sb": 232_399_627,
    "tokenizer_bl": 621_637_131,
    "tokenizer_xlxxl": 2_893_970_443,
    "tokenizer_ss_2d": 135_548_427,   # checkpoint_layouts 1.5: SS_2d 135.5M (decoder-layer type)
}
RECIPES = ["tokenizer_ss", "tokenizer_sb", "tokenizer_bl", "tokenizer_xlxxl", "tokenizer_ss_2d",
           "tokenizer_sb_2d", "tokenizer_bl_2d", "demo"]


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_count_matches_paper(name):
  config = load_recipe(name)
  gen, _ = build.tokenizer(config).abstract, None   # nnx.eval_shape: nothing allocated
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(gen))
  n = summary.count_tree(gen)
  assert abs(n - PAPER_COUNTS[name]) / PAPER_COUNTS[name] < 0.005, n
  assert n == REFERENCE_EXACT[name]


def test_2d_parameter_counts():
  counts = {name: summary.count_tree(build.tokenizer(load_recipe(name)).abstract)
            for name in ("tokenizer_ss_2d", "tokenizer_sb_2d", "tokenizer_bl_2d")}
  assert counts["tokenizer_ss_2d"] == REFERENCE_EXACT["tokenizer_ss_2d"]
  # docs/spec.md §2.3: "about 197M (S-B) and 491M (B-L)" for the plain-layer 2D variants.
  assert abs(counts["tokenizer_sb_2d"] - 197e6) / 197e6 < 0.005
  assert abs(counts["tokenizer_bl_2d"] - 491e6) / 491e6 < 0.005


def test_projector_and_components_are_counted():
  pure = build.tokenizer(load_recipe("tokenizer_ss")).abstract
  # distill_mlp: Linear(512, 2048) + Linear(2048, 2048) + Linear(2048, 768) = 6.8M (docs/spec.md §2.3).
  assert summary.count_tree(pure["s1to2decoder"]["distill_mlp"]) == (
      512 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768)
  assert summary.count_tree(pure["encoder"]) == 26_143_232
  assert summary.count_tree(pure["decoder"]) == 50_161_155
  assert pure["quantize"]["embedding"].shape == (16384, 8)


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_variant_has_same_structure(name):
  full = build.tokenizer(load_recipe(name)).abstract
  tiny = build.tokenizer(load_recipe(name, "tiny")).abstract

  def paths(tree):
    out = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
      # Structure up to repeated indices: layer / block counts shrink, module kinds stay.
      out.add(tuple(str(k.key) for k in path if not isinstance(k.key, int)))
    return out
  assert paths(full) == paths(tiny)
  assert summary.count_tree(tiny) < 10e6


def test_every_parameter_has_logical_axes():
  config = load_recipe("tokenizer_ss", "tiny")
  gen = nnx.eval_shape(lambda: Tokenizer(config.model, config.data.image_size, rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(gen, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.shape), (path, names, var.shape)


def test_multi_level_pool_order():
  # A 4x4 grid whose value encodes (row, col): check the groups 1x1, 1x1, 1x2, 2x4 (rows x cols).
  rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  grid = jnp.asarray(np.stack([rows, cols], -1), jnp.float32)[None]  # (1, 4, 4, 2)
  tokens = np.asarray(qformer.multi_level_pool(grid))[0]              # (16, 2)
  assert tokens.shape == (16, 2)
  np.testing.assert_allclose(tokens[0], [1.5, 1.5])
  np.testing.assert_allclose(tokens[1], [1.5, 1.5])          # the duplicated global average
  np.testing.assert_allclose(tokens[2:4], [[1.5, 0.5], [1.5, 2.5]])   # 1 row x 2 cols: left, right
  np.testing.assert_allclose(tokens[4:8], [[0.5, 0.5], [0.5, 2.5], [2.5, 0.5], [2.5, 2.5]])  # 2x2
  # 2 rows x 4 cols, row-major: first row has row-mean 0.5 and col 0..3.
  np.testing.assert_allclose(tokens[8:12], [[0.5, 0], [0.5, 1], [0.5, 2], [0.5, 3]])
  np.testing.assert_allclose(tokens[12:16], [[2.5, 0], [2.5, 1], [2.5, 2], [2.5, 3]])


def test_multi_level_pool_group_sizes_at_16():
  grid = jnp.zeros((1, 16, 16, 1))
  assert qformer.multi_level_pool(grid).shape == (1, 256, 1)


def test_multi_level_unpool_mirrors_the_pool_on_a_4x4_grid():
  # Token t gets the value t; a cell's query is the mean of the tokens whose pooling region holds
  # it: token 0 and 1 (global), one of 2-3 (left/right half), 4-7 (quadrant), 8-15 (2x1 cells).
  tokens = jnp.arange(16, dtype=jnp.float32).reshape(1, 16, 1)
  grid = np.asarray(qformer.multi_level_unpool(tokens, 4, 4))[0, :, :, 0]   # (4, 4)
  for r in range(4):
    for c in range(4):
      holders = [0, 1, 2 + c // 2, 4 + 2 * (r // 2) + c // 2, 8 + 4 * (r // 2) + c]
      assert grid[r, c] == pytest.approx(np.mean(holders)), (r, c)
  # Every level tiles the grid once, so unpooling the pooled tokens keeps each image's mean.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  out = qformer.multi_level_unpool(qformer.multi_level_pool(x), 8, 8)
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)


def test_decoder_query_init_and_norm_groups_options():
  c = load_recipe("demo")
  images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1, maxval=1)
  outputs = {}
  for init in ("first_token", "unpool"):
    c.model.dec_query_init = init
    model = Tokenizer(c.model, image_size=64, rngs=nnx.Rngs(0))
    outputs[init] = np.asarray(model(images).reconstruction)
  # Same weights (same seed, no new parameters), different queries: different reconstructions.
  assert not np.allclose(outputs["first_token"], outputs["unpool"])
  c.model.cnn_norm_groups = 8
  model = Tokenizer(c.model, image_size=64, rngs=nnx.Rngs(0))
  assert model.encoder.norm_out.num_groups == 8 and model.decoder.adaptive[0].num_groups == 8


def test_quantizer_indices_losses_and_usage():
  q = quantizer.VectorQuantizer(64, 8, rngs=nnx.Rngs(0), rotation_trick=True)
  z = jax.random.normal(jax.random.key(1), (2, 16, 8))
  out = q(z, with_entropy=True)
  zn = np.asarray(z / jnp.linalg.norm(z, axis=-1, keepdims=True)).reshape(-1, 8)
  e = np.asarray(q.codebook())
  d = (zn ** 2).sum(1, keepdims=True) + (e ** 2).sum(1) - 2 * zn @ e.T
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), d.argmin(1))
  zq = e[d.argmin(1)]
  np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, 8), zq, atol=1e-5)
  np.testing.assert_allclose(out.vq_loss, np.mean((zq - zn) ** 2), rtol=1e-5)
  np.testing.assert_allclose(out.commit_loss, 0.25 * np.mean((zq - zn) ** 2), rtol=1e-5)
  logits = -d / 0.01
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  h_sample = np.mean(-(p * np.log(np.maximum(p, 1e-30))).sum(1))
  pbar = p.mean(0)
  h_avg = -(pbar * np.log(pbar + 1e-5)).sum()
  np.testing.assert_allclose(out.entropy_loss, h_sample - h_avg, rtol=1e-3, atol=1e-4)


def test_rotation_trick_value_and_gradient_path():
  q = quantizer.VectorQuantizer(32, 8, rngs=nnx.Rngs(0), rotation_trick=True)
  st = quantizer.VectorQuantizer(32, 8, rngs=nnx.Rngs(0), rotation_trick=False)
  z = jax.random.normal(jax.random.key(2), (1, 4, 8))
  g = jax.random.normal(jax.random.key(3), (1, 4, 8))
  grad_rot = jax.grad(lambda z: jnp.sum(q(z).quantized * g))(z)
  grad_st = jax.grad(lambda z: jnp.sum(st(z).quantized * g))(z)
  np.testing.assert_allclose(q(z).quantized, st(z).quantized, atol=1e-5)
  # Different gradient paths (rotation vs identity) must give different gradients.
  assert not np.allclose(grad_rot, grad_st, atol=1e-4)


def test_codebook_usage_and_perplexity():
  buf = jnp.array([-1, -1, 0, 1, 1, 3], jnp.int32)
  assert float(quantizer.codebook_usage(buf, 8)) == pytest.approx(3 / 8)
  assert float(quantizer.code_perplexity(jnp.array([0, 1, 2, 3]), 16)) == pytest.approx(4.0)
  assert float(quantizer.code_perplexity(jnp.array([5, 5, 5]), 16)) == pytest.approx(1.0)


def test_decode_indices_matches_forward():
  config = load_recipe("tokenizer_ss", "tiny")
  graph, state = nnx.split(Tokenizer(config.model, 64, rngs=nnx.Rngs(0)))
  x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1, maxval=1)
  # Jitted: op-by-op (eager) dispatch of the whole model takes several times longer on CPU.
  out = jax.jit(lambda s, x: nnx.merge(graph, s)(x))(state, x)
  decoded = jax.jit(lambda s, i: nnx.merge(graph, s).decode_indices(i))(state, out.indices)
  np.testing.assert_allclose(decoded, out.reconstruction, atol=1e-4)
  np.testing.assert_array_equal(jax.jit(lambda s, x: nnx.merge(graph, s).encode(x))(state, x),
                                out.indices)


def test_bfloat16_compute_keeps_float32_params():
  config = load_recipe("tokenizer_ss", "tiny")
  config.model.dtype = "bfloat16"
  model = Tokenizer(config.model, 64, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3), minval=-1, maxval=1)
  graph, state = nnx.split(model)
  out = jax.jit(lambda s, x: nnx.merge(graph, s)(x))(state, x)
  assert out.reconstruction.dtype == jnp.float32 and np.isfinite(np.asarray(out.reconstruction)).all()


def test_same_outputs_on_one_and_eight_device_meshes():
  """The model runs unchanged on a 1-device and an 8-device (data 2 x fsdp 2 x tensor 2) mesh."""
  config = load_recipe("tokenizer_ss", "tiny")
  x = np.asarray(jax.random.uniform(jax.random.key(0), (4, 64, 64, 3), minval=-1, maxval=1))
  rules = config.mesh.axis_rules
  results = []
  for sizes, devices in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), jax.devices()[:8])):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = sizes
    mesh = parallel.make_mesh(config.mesh, devices)
    abstract = nnx.eval_shape(lambda: Tokenizer(config.model, 64, rngs=nnx.Rngs(0)))
    graph, abs_params = nnx.split(abstract, nnx.Param)
    shardings = parallel.state_shardings(abs_params, mesh, rules)

    def init():
      return nnx.to_pure_dict(nnx.state(Tokenizer(config.model, 64, rngs=nnx.Rngs(0)), nnx.Param))
    with jax.set_mesh(mesh):
      params = jax.jit(init, out_shardings=shardings)()
      xs = jax.device_put(x, parallel.batch_sharding(mesh, rules, 4))
      recon = jax.jit(lambda p, x: nnx.merge(graph, p)(x).reconstruction)(params, xs)
    results.append((np.asarray(recon), params))
  np.testing.assert_allclose(results[0][0], results[1][0], atol=2e-4)
  # On the 8-device mesh, FSDP / tensor sharding is real: a Q-Former MLP kernel is split 2 x 2.
  fc1 = results[1][1]["s2to1encoder"]["stack"]["transformer"][0]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert fc1.addressable_shards[0].data.shape == (32, 128)  # (64, 256) over fsdp 2 x tensor 2


@pytest.mark.parametrize("kind,remat", [("1d", "full"), ("2d_decoder", "save_dots")])
def test_scanned_layers_match_unrolled(kind, remat):
  """`model.scan_layers` stores a stack depth-first and runs it as one scan: same init values,
  same outputs and gradients, including the semantic tap after layer 2 of 4."""
  kw = dict(grid=4, z_channels=16, width=32, layers=4, heads=2, mlp_ratio=2.0, distill_depth=2,
            distill_dim=8, remat=remat)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16) if kind == "1d" else (2, 4, 4, 16))
  results = []
  for scan in (False, True):
    if kind == "1d":
      module = qformer.QFormerDecoder(num_tokens=16, scan_layers=scan, rngs=nnx.Rngs(0), **kw)
    else:
      module = qformer.ViTDecoder2D(layer_type="decoder", scan_layers=scan, rngs=nnx.Rngs(0), **kw)
    graph, params = nnx.split(module, nnx.Param)

    def loss(p):
      out, distill = nnx.merge(graph, p)(x, with_distill=True)
      return jnp.mean(out ** 2) + jnp.mean(distill ** 2), distill
    (value, distill), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results.append((flatten(nnx.to_pure_dict(params)), value, distill,
                    flatten(nnx.to_pure_dict(grads))))
  (p0, v0, d0, g0), (p1, v1, d1, g1) = results
  assert p1["stack.layers.self_attn.query"].shape == (4, 32, 2, 16)
  assert not any(".transformer." in k for k in p1)
  assert layer_layout.to_scanned(p0).keys() == p1.keys()
  for k, v in layer_layout.to_unrolled(p1).items():
    np.testing.assert_array_equal(v, p0[k], err_msg=k)
  np.testing.assert_allclose(v0, v1, rtol=1e-5)
  np.testing.assert_allclose(d0, d1, atol=1e-5)
  for k, v in layer_layout.to_unrolled(g1).items():
    np.testing.assert_allclose(v, g0[k], atol=1e-5, rtol=1e-4, err_msg=k)
  queries = [v for k, v in g0.items() if k.endswith("self_attn.query")]
  assert len(queries) == 4 and all(np.abs(v).max() > 0 for v in queries)


def test_scanned_stacks_are_sharded_like_their_layers():
  """The depth axis of a scanned stack is replicated; the other axes follow the layer's names."""
  config = load_recipe("tokenizer_ss", "tiny")
  specs = {}
  for scan in (False, True):
    config.model.scan_layers = scan
    abstract = nnx.eval_shape(lambda: Tokenizer(config.model, 64, rngs=nnx.Rngs(0)))
    names = jax.tree.map(lambda v: v.get_metadata()["out_sharding"], nnx.state(abstract, nnx.Param),
                         is_leaf=lambda v: isinstance(v, nnx.Variable))
    specs[scan] = flatten(jax.tree.map(lambda n: np.array(n, dtype=object), nnx.to_pure_dict(names),
                                       is_leaf=lambda n: isinstance(n, tuple)))
  stacked = specs[True]["s1to2decoder.stack.layers.mlp.fc1.kernel"]
  assert tuple(stacked) == ("layers",) + tuple(specs[False]["s1to2decoder.stack.transformer.0.mlp.fc1.kernel"])
  rules = dict(config.mesh.axis_rules)
  assert rules["layers"] is None


def test_layer_layout_conversions_and_hint():
  flat = {"a.stack.transformer.1.w": np.ones((2, 3)), "a.stack.transformer.0.w": np.zeros((2, 3)),
          "a.other": np.ones(4)}
  scanned = layer_layout.to_scanned(flat)
  assert set(scanned) == {"a.stack.layers.w", "a.other"}
  np.testing.assert_array_equal(scanned["a.stack.layers.w"][:, 0, 0], [0, 1])
  assert layer_layout.to_unrolled({"a.stack.layers.w": (2, 2, 3)}) == {
      "a.stack.transformer.0.w": (2, 3), "a.stack.transformer.1.w": (2, 3)}
  with pytest.raises(ValueError, match="not 0..0"):
    layer_layout.to_scanned({"a.stack.transformer.1.w": np.ones(1)})
  assert "scan_layers=True" in layer_layout.mismatch_hint(scanned, flat)
  assert "scan_layers=False" in layer_layout.mismatch_hint(flat, scanned)
  assert layer_layout.mismatch_hint(flat, flat) == ""
