"""Golden sharding and FSDP memory scaling of the tokenizer train state (8 fake CPU devices).

Golden: for the tiny S-S recipe on a data=2 x fsdp=2 x tensor=2 mesh with the default logical axis
rules, the PartitionSpec of every generator and discriminator parameter must equal the checked-in
tests/golden/sharding_tokenizer_ss_tiny.json. A change to the rules or to a module's axis names must
be deliberate: regenerate with GIGATOK_UPDATE_GOLDEN=1 and review the JSON diff.

Memory: with the parameters and optimizer state sharded over `fsdp`, the per-device argument
bytes of the compiled train step (XLA memory_analysis) fall as ~1/N.
"""

import json
import os

import jax
import numpy as np
import pytest

from gigatok_jax import parallel
from gigatok_jax.train.tokenizer import TokenizerTask
from helpers import load_recipe

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "sharding_tokenizer_ss_tiny.json")


def _spec_table(shardings) -> dict[str, list]:
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  out = {}
  for path, sharding in flat:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = [list(a) if isinstance(a, tuple) else a for a in sharding.spec]
  return dict(sorted(out.items()))


def test_golden_parameter_shardings():
  config = load_recipe("tokenizer_ss", "tiny")
  config.mesh.update(data=2, fsdp=2, tensor=2)
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, jax.devices()[:8]))
  got = {"generator": _spec_table(task.state_shardings.gen_params),
         "discriminator": _spec_table(task.state_shardings.disc_params)}
  if os.environ.get("GIGATOK_UPDATE_GOLDEN"):
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:  # one parameter per line, so that diffs read well
      f.write("{\n" + ",\n".join(
          f'  "{part}": {{\n' + ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}"
                                            for k, v in got[part].items()) + "\n  }"
          for part in sorted(got)) + "\n}\n")
  with open(GOLDEN) as f:
    want = json.load(f)
  for part in ("generator", "discriminator"):
    missing = sorted(set(want[part]) - set(got[part]))
    added = sorted(set(got[part]) - set(want[part]))
    changed = {k: (want[part][k], got[part][k]) for k in sorted(set(want[part]) & set(got[part]))
               if want[part][k] != got[part][k]}
    assert not (missing or added or changed), (
        f"{part} shardings differ from {GOLDEN} (regenerate with GIGATOK_UPDATE_GOLDEN=1 if "
        f"deliberate): missing {missing[:5]}, new {added[:5]}, changed {list(changed.items())[:5]}")
  # The golden file really shards: the big kernels are split over fsdp and tensor.
  specs = [s for s in got["generator"].values() if any(a is not None for a in s)]
  assert len(specs) > len(got["generator"]) // 2


def _argument_bytes(n: int) -> int:
  config = load_recipe("tokenizer_ss", "tiny")
  config.mesh.update(data=1, fsdp=n, tensor=1)
  config.global_batch_size = 8
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:n])
  task = TokenizerTask(config, mesh)
  batch = {"image": jax.ShapeDtypeStruct((8, 64, 64, 3), np.float32,
                                         sharding=parallel.batch_sharding(mesh, task.rules, 4)),
           "label": jax.ShapeDtypeStruct((8,), np.int32,
                                         sharding=parallel.batch_sharding(mesh, task.rules, 1))}
  with jax.set_mesh(mesh):
    compiled = task.jitted_train_step((False, False)).lower(
        task.abstract_state, batch, task.teachers.abstract_args(mesh, task.rules)).compile()
  return int(compiled.memory_analysis().argument_size_in_bytes)


def test_fsdp_argument_bytes_scale_as_one_over_n():
  sizes = {n: _argument_bytes(n) for n in (1, 2, 4, 8)}
  print(f"[memory] argument bytes per device by FSDP size: {sizes}")
  for n, size in sizes.items():
    ideal = sizes[1] / n
    assert abs(size - ideal) <= 0.15 * ideal, (
        f"FSDP over {n} devices: {size} argument bytes per device, ideal {ideal:.0f} "
        f"(all: {sizes})")


def test_remat_policies_wrap_every_block_and_keep_the_math():
  """'full' and 'save_dots' put each transformer layer and CNN res block under jax.checkpoint
  (21 blocks in the tiny recipe: CNN 6 + 10 res blocks, 2 + 3 transformer layers) and change no
  value or gradient. (XLA:CPU drops the optimisation barriers and shows no temp-memory drop, so
  memory is not asserted here.)"""
  from flax import nnx
  from gigatok_jax.models.tokenizer import Tokenizer
  images = jax.numpy.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)), np.float32)
  results = {}
  for policy in ("none", "full", "save_dots"):
    config = load_recipe("tokenizer_ss", "tiny")
    config.model.remat = policy
    graph, params = nnx.split(Tokenizer(config.model, 64, rngs=nnx.Rngs(0)), nnx.Param)

    def loss(p):
      return jax.numpy.mean(jax.numpy.square(nnx.merge(graph, p)(images).reconstruction - images))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params)
    blocks = sum(1 for eq in jaxpr.jaxpr.eqns if "remat" in eq.primitive.name
                 or "checkpoint" in eq.primitive.name)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    results[policy] = (float(value), jax.tree.leaves(grads), blocks)
  assert results["none"][2] == 0
  base_value, base_grads, _ = results["none"]
  for policy in ("full", "save_dots"):
    value, grads, blocks = results[policy]
    assert blocks == 21, (policy, blocks)
    assert abs(value - base_value) < 1e-6
    for a, b in zip(grads, base_grads):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_ici_dcn_mesh_shapes_and_errors():
  from gigatok_jax import config as config_lib
  from gigatok_jax.errors import ConfigError
  m = config_lib.tokenizer_config().mesh
  assert parallel.mesh_shape(m, 8) == (8, 1, 1)
  m.update(fsdp=2, dcn_data=2)                 # 2 slices of 4: data 2 x fsdp 2 inside, x2 across
  assert parallel.ici_shape(m, 4) == (2, 2, 1)
  assert parallel.mesh_shape(m, 8) == (4, 2, 1)
  m.update(dcn_data=3)
  with pytest.raises(ConfigError, match="mesh.dcn_data"):
    parallel.mesh_shape(m, 8)
  # One process: the CPU devices form a single slice, so a hybrid mesh over 2 of them is refused.
  m.update(data=1, fsdp=4, dcn_data=2)
  with pytest.raises(ConfigError, match="hybrid mesh"):
    parallel.make_mesh(m, jax.devices()[:8])


def test_block_outputs_carry_batch_sharding_constraints():
  """Every block (21 in tiny S-S) pins its output to batch-over-(data, fsdp) in the lowered step."""
  config = load_recipe("tokenizer_ss", "tiny")
  config.mesh.update(data=2, fsdp=2, tensor=2)
  task = TokenizerTask(config, parallel.make_mesh(config.mesh, jax.devices()[:8]))
  mesh = task.mesh
  batch = {"image": jax.ShapeDtypeStruct((4, 64, 64, 3), np.float32,
                                         sharding=parallel.batch_sharding(mesh, task.rules, 4)),
           "label": jax.ShapeDtypeStruct((4,), np.int32,
                                         sharding=parallel.batch_sharding(mesh, task.rules, 1))}
  with jax.set_mesh(mesh):
    text = jax.jit(task.train_step_fn()).lower(task.abstract_state, batch,
                                               task.teachers.abstract_args(mesh, task.rules)).as_text()
  constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
  assert len(constraints) >= 21, len(constraints)
  assert all('{"data", "fsdp"}' in line for line in constraints), constraints[:2]
