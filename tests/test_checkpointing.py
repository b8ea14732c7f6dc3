"""Tests for gigatok_jax.checkpointing (Orbax CheckpointManager wrapper)."""

import json
import os
import shutil
import subprocess
import sys

import flax.struct
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from gigatok_jax.checkpointing import Checkpointer
from gigatok_jax.errors import CheckpointError

_RESHARD_DEVICES = 4


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  generator: dict
  discriminator: dict
  opt_g: optax.OptState
  opt_d: optax.OptState
  ema: dict | None
  rng: jax.Array


def _make_state(seed=0, ema=False):
  """A small trainer-like state with real optax states (namedtuples, EmptyState) and a None leaf."""
  k = jax.random.split(jax.random.key(seed), 4)
  gen = {'encoder': {'conv': {'kernel': jax.random.normal(k[0], (3, 3, 4, 8)),
                              'bias': jnp.zeros((8,))}},
         'codebook': {'embedding': jax.random.normal(k[1], (16, 8))}}
  disc = {'params': {'dense': {'kernel': jax.random.normal(k[2], (8, 4))}},
          'batch_stats': {'bn': {'mean': jnp.full((4,), 0.5), 'var': jnp.ones((4,))}}}
  tx_g, tx_d = optax.adamw(1e-3, weight_decay=0.05), optax.adam(1e-4)
  opt_g, opt_d = tx_g.init(gen), tx_d.init(disc['params'])
  # One update so the moments and counts are not all zeros.
  grads = jax.tree.map(jnp.ones_like, gen)
  _, opt_g = tx_g.update(grads, opt_g, gen)
  return TrainState(step=np.int64(10), generator=gen, discriminator=disc, opt_g=opt_g,
                    opt_d=opt_d, ema=jax.tree.map(lambda x: x * 2, gen) if ema else None,
                    rng=k[3])


def _abstract(state, sharding_fn):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding_fn(x)), state)


def _one_device(_):
  return SingleDeviceSharding(jax.devices()[0])


def _assert_trees_equal(actual, expected):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0],
                          jax.tree.leaves(expected)):
    if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
      assert a.dtype == b.dtype, path
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def _dataset():
  return grain.MapDataset.range(100).shuffle(seed=0).to_iter_dataset().batch(4)


def _simple_state(width=4):
  return {'params': {'enc': {'w': jnp.arange(8 * width, dtype=jnp.float32).reshape(8, width),
                             'b': jnp.ones((8,))}},
          'step': np.int64(1)}


def test_round_trip_with_optax_state_and_grain_iterator(tmp_path):
  state = _make_state(ema=False)
  iterator = iter(_dataset())
  for _ in range(3):
    next(iterator)
  with Checkpointer(tmp_path, save_every_steps=5) as ckpt:
    assert ckpt.save(10, state, iterator)
    after_save = [next(iterator) for _ in range(3)]
    for _ in range(5):  # move further on, so a restore that did nothing would be noticed
      next(iterator)
    restored = ckpt.restore(_abstract(state, _one_device), iterator)
    assert ckpt.latest_step() == 10

  assert isinstance(restored, TrainState)
  assert restored.ema is None
  assert isinstance(restored.opt_g[0], optax.ScaleByAdamState)
  assert isinstance(restored.opt_g[1], optax.EmptyState)
  assert int(restored.opt_g[0].count) == 1
  _assert_trees_equal(restored, state)
  for expected in after_save:
    np.testing.assert_array_equal(next(iterator), expected)

  # A new Checkpointer (a resumed job) finds the step and restores the iterator into a fresh one.
  fresh_iterator = iter(_dataset())
  with Checkpointer(tmp_path, save_every_steps=5) as ckpt:
    assert ckpt.latest_step() == 10
    _assert_trees_equal(ckpt.restore(_abstract(state, _one_device), fresh_iterator), state)
  np.testing.assert_array_equal(next(fresh_iterator), after_save[0])


def test_round_trip_with_ema_and_without_iterator(tmp_path):
  state = _make_state(seed=1, ema=True)
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(3, state)
    # Restoring with an iterator when none was saved leaves the iterator where it was.
    iterator = iter(_dataset())
    first = next(iterator)
    restored = ckpt.restore(_abstract(state, _one_device), iterator)
  _assert_trees_equal(restored, state)
  assert not np.array_equal(next(iterator), first)


def test_async_save_survives_deleting_the_arrays(tmp_path):
  """The trainer donates its state right after `save` returns; the checkpoint must not care."""
  state = {'w': jnp.arange(512 * 256, dtype=jnp.float32).reshape(512, 256), 'b': jnp.ones((3,))}
  expected = jax.tree.map(np.asarray, state)
  with Checkpointer(tmp_path, save_every_steps=1, async_save=True) as ckpt:
    assert ckpt.save(1, state)
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    ckpt.wait_until_finished()
    restored = ckpt.restore(_abstract(expected, _one_device))
  _assert_trees_equal(restored, expected)


def test_should_save_force_and_repeated_step(tmp_path):
  state = _simple_state()
  with Checkpointer(tmp_path, save_every_steps=5, async_save=False) as ckpt:
    assert [s for s in range(12) if ckpt.should_save(s)] == [0, 5, 10]
    assert not ckpt.save(3, state)
    assert ckpt.latest_step() is None
    assert ckpt.save(3, state, force=True)
    assert ckpt.latest_step() == 3
    assert not ckpt.save(3, state, force=True)  # same step again: skipped, no crash
    assert ckpt.save(5, state)
    assert not ckpt.save(5, state)
    assert ckpt.all_steps() == [3, 5]


def test_latest_step_and_max_to_keep(tmp_path):
  state = _simple_state()
  with Checkpointer(tmp_path, save_every_steps=1, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() is None
    for step in range(1, 6):
      assert ckpt.save(step, state)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 5
    assert ckpt.all_steps() == [4, 5]
  step_dirs = sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit())
  assert step_dirs == ['4', '5']
  with Checkpointer(tmp_path, save_every_steps=1, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 5


def _reshard_check(directory):
  """Saves from one device and restores onto a 4-device mesh; needs >= 4 devices."""
  devices = jax.devices()
  assert len(devices) >= _RESHARD_DEVICES, devices
  state = _make_state(seed=2)
  state = jax.device_put(state, SingleDeviceSharding(devices[0]))
  with Checkpointer(directory, save_every_steps=1) as ckpt:
    ckpt.save(7, state)
  mesh = jax.sharding.Mesh(np.array(devices[:_RESHARD_DEVICES]), ('fsdp',),
                           axis_types=(jax.sharding.AxisType.Auto,))

  def sharding_fn(x):
    shape = np.shape(x)
    if shape and shape[-1] % _RESHARD_DEVICES == 0:
      return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), 'fsdp'))
    return NamedSharding(mesh, P())

  abstract = _abstract(state, sharding_fn)
  with Checkpointer(directory, save_every_steps=1) as ckpt:
    restored = ckpt.restore(abstract)
  _assert_trees_equal(restored, state)
  kernel = restored.generator['encoder']['conv']['kernel']
  assert kernel.sharding == abstract.generator['encoder']['conv']['kernel'].sharding
  assert len(kernel.addressable_shards) == _RESHARD_DEVICES
  assert kernel.addressable_shards[0].data.shape == (3, 3, 4, 8 // _RESHARD_DEVICES)
  assert restored.step.sharding == NamedSharding(mesh, P())


def test_restore_onto_a_different_mesh(tmp_path):
  if len(jax.devices()) >= _RESHARD_DEVICES:
    _reshard_check(str(tmp_path))
    return
  # The device count was fixed before this module could raise it: run in a fresh process.
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(_RESHARD_DEVICES), JAX_PLATFORMS='cpu')
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [repo_root, env.get('PYTHONPATH')]))
  result = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'RESHARD OK' in result.stdout


def test_incomplete_checkpoints_are_ignored(tmp_path):
  state = _simple_state()
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(2, state)
  # A save that died before its commit, named the way Orbax 0.12 (and older versions) name them.
  for name in ('7.orbax-checkpoint-tmp', '8.orbax-checkpoint-tmp-1712345678'):
    shutil.copytree(tmp_path / '2', tmp_path / name)
  # A step directory without the commit marker (half-copied, or a crash on a non-atomic store):
  # Orbax itself counts it as a finished step on a local disk.
  shutil.copytree(tmp_path / '2', tmp_path / '9')
  (tmp_path / '9' / 'commit_success.txt').unlink()
  # A step directory without our metadata item.
  shutil.copytree(tmp_path / '2', tmp_path / '11')
  shutil.rmtree(tmp_path / '11' / 'meta')

  abstract = _abstract(state, _one_device)
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    assert ckpt.latest_step() == 2
    assert ckpt.all_steps() == [2]
    _assert_trees_equal(ckpt.restore(abstract), state)
    with pytest.raises(CheckpointError, match=r'step 9 .*complete steps: \[2\]'):
      ckpt.restore(abstract, step=9)
    # A reader (repair off) never writes over the broken directory.
    with pytest.raises(CheckpointError, match=r'/9 exists but is not a complete checkpoint'):
      ckpt.save(9, state)
    # Saving the step of a leftover temporary directory replaces it.
    assert ckpt.save(7, state)
    assert ckpt.latest_step() == 7
  assert not (tmp_path / '7.orbax-checkpoint-tmp').exists()
  # The training job (repair on) moves the incomplete step directories aside when it opens them,
  # so the final save of step 9 is not blocked.
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False, repair=True) as ckpt:
    aside = sorted(p.name.split('.')[:2][0] + '.' + p.name.split('.')[1]
                   for p in (tmp_path / 'set_aside').iterdir())
    assert aside == ['11.incomplete', '9.incomplete']
    assert ckpt.save(9, state)
    assert ckpt.latest_step() == 9


@pytest.mark.parametrize('change', ['shape', 'new_param', 'removed_param'])
def test_mismatched_state_names_the_parameter(tmp_path, change):
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(4, _simple_state(width=4))
    if change == 'shape':
      target = _simple_state(width=6)
      pattern = r"'params/enc/w' has shape \(8, 4\) in the checkpoint but \(8, 6\)"
    elif change == 'new_param':
      target = _simple_state()
      target['params']['dec'] = {'w': jnp.ones((2, 3))}
      pattern = r"'params/dec/w' \(shape \(2, 3\)\) is not in the checkpoint"
    else:
      target = _simple_state()
      del target['params']['enc']['b']
      pattern = r"checkpoint has parameter 'params/enc/b' \(shape \(8,\)\)"
    with pytest.raises(CheckpointError, match=pattern) as info:
      ckpt.restore(_abstract(target, _one_device))
  assert str(tmp_path) in str(info.value) and 'step 4' in str(info.value)
  assert isinstance(info.value.__cause__, ValueError)   # Orbax's strict restore refused it


def _corrupt_array_data(step_dir):
  data_files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert data_files
  for p in data_files:
    p.write_bytes(b'not a checkpoint' * 4)


def _corrupt_state_metadata(step_dir):
  (step_dir / 'state' / '_METADATA').write_text('{"tree_metadata": ')


def _corrupt_meta_item(step_dir):
  meta_files = [p for p in (step_dir / 'meta').iterdir() if p.name != 'commit_success.txt']
  assert meta_files
  for p in meta_files:
    p.write_text('{oops')


def _corrupt_data_iter_state(step_dir):
  (step_dir / 'data_iter' / 'process_0-of-1.json').write_text('{"next_index": ')


# A failed tensorstore read can leave a callback that fires after its event loop closed.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('corrupt', [_corrupt_array_data, _corrupt_state_metadata,
                                     _corrupt_meta_item, _corrupt_data_iter_state])
def test_corrupted_checkpoint_raises_checkpoint_error(tmp_path, corrupt):
  state = _simple_state()
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(5, state, iter(_dataset()))
  corrupt(tmp_path / '5')
  with Checkpointer(tmp_path, save_every_steps=1) as ckpt:
    assert ckpt.latest_step() == 5
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(_abstract(state, _one_device), iter(_dataset()))
  message = str(info.value)
  assert 'step 5' in message and str(tmp_path) in message


def test_bad_input_raises_checkpoint_error(tmp_path):
  with pytest.raises(CheckpointError, match='save_every_steps'):
    Checkpointer(tmp_path, save_every_steps=0)
  with pytest.raises(CheckpointError, match='max_to_keep'):
    Checkpointer(tmp_path, save_every_steps=1, max_to_keep=0)
  with Checkpointer(tmp_path, save_every_steps=1) as ckpt:
    with pytest.raises(CheckpointError, match='no complete checkpoint in'):
      ckpt.restore(_abstract(_simple_state(), _one_device))
    with pytest.raises(CheckpointError, match='non-negative integer'):
      ckpt.save(-1, _simple_state(), force=True)
    with pytest.raises(CheckpointError, match='non-negative integer'):
      ckpt.should_save(2.5)
  with pytest.raises(CheckpointError, match='closed'):
    ckpt.save(1, _simple_state())


# ------------------------------------------------------------------------- integrity (checksums)
def _big_state(value):
  """64 KB per array, so that a 4 KB overwrite lands inside one data file."""
  return {'params': {'w': jnp.full((64, 256), value, jnp.float32),
                     'b': jnp.arange(64 * 256, dtype=jnp.float32).reshape(64, 256) * value},
          'step': np.int64(value)}


def _largest_data_file(step_dir):
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  return max(files, key=lambda p: p.stat().st_size)


def _overwrite_4kb(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  assert len(data) > 8192
  data[4096:8192] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
  path.write_bytes(bytes(data))          # same size, different bytes
  return path.name


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[:100])
  return path.name


def _delete(step_dir):
  path = _largest_data_file(step_dir)
  path.unlink()
  return path.name


def _no_checksums(step_dir):         # killed between Orbax's commit and the checksums
  (step_dir / 'checksums.json').unlink()
  return 'incomplete'


def _no_commit_marker(step_dir):     # a half-copied workdir, or Orbax's in-place mode on GCS
  (step_dir / 'commit_success.txt').unlink()
  return 'incomplete'


def _no_meta(step_dir):
  shutil.rmtree(step_dir / 'meta')
  return 'incomplete'


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', [_overwrite_4kb, _truncate, _delete, _no_checksums,
                                    _no_commit_marker, _no_meta])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, capfd):
  with Checkpointer(tmp_path, save_every_steps=10) as ckpt:   # async saves, as in training
    ckpt.save(10, _big_state(1.0))
    ckpt.save(20, _big_state(2.0))
  for step in (10, 20):
    assert (tmp_path / str(step) / 'checksums.json').is_file()
  culprit = damage(tmp_path / '20')
  capfd.readouterr()
  abstract = _abstract(_big_state(0.0), _one_device)
  with Checkpointer(tmp_path, save_every_steps=10, repair=True) as ckpt:
    restored = ckpt.restore(abstract)
    assert ckpt.restored_step == 10
    _assert_trees_equal(restored, _big_state(1.0))
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if 'warning:' in line]
    assert len(warnings) == 1, err
    assert 'step 20' in warnings[0] and culprit in warnings[0] and 'set_aside' in warnings[0]
    assert [p.name.split('.')[0] for p in (tmp_path / 'set_aside').iterdir()] == ['20']
    # The step can be saved again: nothing blocks the run's next or final save.
    assert ckpt.save(20, _big_state(3.0))
  with Checkpointer(tmp_path, save_every_steps=10) as ckpt:
    assert ckpt.latest_step() == 20
    _assert_trees_equal(ckpt.restore(abstract), _big_state(3.0))


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_no_intact_checkpoint_is_one_error_and_nothing_is_moved(tmp_path):
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(5, _big_state(1.0))
  culprit = _overwrite_4kb(tmp_path / '5')
  with Checkpointer(tmp_path, save_every_steps=1, repair=True) as ckpt:
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(_abstract(_big_state(0.0), _one_device))
  message = str(info.value)
  assert message.startswith(f'no intact checkpoint in {tmp_path}: step 5: state/')
  assert culprit in message and '\n' not in message
  # Never starts a damaged-only run from scratch behind the user's back: step 5 stays in place.
  assert (tmp_path / '5').is_dir() and not (tmp_path / 'set_aside').exists()
  with Checkpointer(tmp_path, save_every_steps=1) as ckpt:
    with pytest.raises(CheckpointError, match='step 5 .* is damaged: state/'):
      ckpt.restore_fields({'params': _abstract(_big_state(0.0), _one_device)['params']}, step=5)


def test_format_1_checkpoints_without_checksums_still_restore(tmp_path):
  """Steps written before checksums existed (format 1) are restored, unverified."""
  with Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
    ckpt.save(3, _big_state(1.0))
  (tmp_path / '3' / 'checksums.json').unlink()
  meta_file = tmp_path / '3' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  assert meta['format_version'] == 2
  meta_file.write_text(json.dumps({**meta, 'format_version': 1}))
  with Checkpointer(tmp_path, save_every_steps=1, repair=True) as ckpt:
    assert ckpt.latest_step() == 3
    _assert_trees_equal(ckpt.restore(_abstract(_big_state(0.0), _one_device)), _big_state(1.0))


if __name__ == '__main__':
  # Child process of test_restore_onto_a_different_mesh (JAX_NUM_CPU_DEVICES set by the parent).
  _reshard_check(sys.argv[1])
  print('RESHARD OK')


def test_small_replicated_arrays_are_saved_without_slice_programs(tmp_path):
  """Replica-parallel saving (each replica writes part of a replicated array) stays on for big
  arrays only: small ones would each cost a compiled slice program on a process's first save."""
  from gigatok_jax import checkpointing
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  replicated = NamedSharding(mesh, P())
  big_rows = 2 * checkpointing.REPLICA_PARALLEL_MIN_BYTES // (4 * 256)   # 2 replicas x threshold
  # Shapes no other test saves: jit caches the slice programs per shape within this process.
  trees = {"small": {f"w{i}": jax.device_put(jnp.full((7 + i, 3), float(i)), replicated)
                     for i in range(5)},
           "big": {"w": jax.device_put(jnp.ones((big_rows, 256)), replicated)}}
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = {}
    for name, tree in trees.items():
      ckpt = Checkpointer(tmp_path / name, save_every_steps=1)
      del compiles[:]
      ckpt.save(1, tree, force=True)
      ckpt.wait_until_finished()
      counts[name] = len(compiles)
      restored = ckpt.restore(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree))
      for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      ckpt.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert counts["small"] == 0, counts
  assert counts["big"] >= 1, counts        # the big array is still split between the replicas
