"""Checkpointing: a thin wrapper over Orbax's `CheckpointManager` (V0 API).

One step directory holds three Orbax items, written together:

  <directory>/<step>/state/      the training state pytree (`ocp.args.StandardSave`)
  <directory>/<step>/data_iter/  the grain iterator state, one JSON file per process (optional)
  <directory>/<step>/meta/       small JSON: format version, step, process count, ...
  <directory>/<step>/checksums.json  size and sha256 of every file above (checkpoint_integrity.py)

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it on commit (local disks), or
writes in place and adds `commit_success.txt` last (GCS); process 0 then writes the checksums.
`latest_step()` only counts steps that carry the commit marker, our `meta` item and the checksums
(format 1 steps, written before checksums existed, need none), so an unfinished or half-copied
step is never "latest". A restore verifies the checksums and falls back to the newest intact step.

Every process of a multi-process job must make the same calls with the same step (Orbax
synchronizes the processes inside `save` and `restore`).
"""

from __future__ import annotations

import datetime
import json
import logging
import operator
import os
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from gigatok_jax import checkpoint_integrity as integrity
from gigatok_jax import console
from gigatok_jax.errors import CheckpointError
from gigatok_jax.models import layer_layout
from gigatok_jax.version import VERSION

try:  # grain registers its Orbax handler and args only when both are importable.
  import grain.checkpoint as grain_checkpoint
  _GRAIN_ARGS = (grain_checkpoint.CheckpointSave, grain_checkpoint.CheckpointRestore)
except (ImportError, AttributeError):  # pragma: no cover - grain is a core dependency
  grain_checkpoint = None
  _GRAIN_ARGS = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2          # 2: steps carry checksums.json (1: no checksums; still restored)
STATE_ITEM = 'state'
DATA_ITER_ITEM = 'data_iter'
META_ITEM = 'meta'
# Written by Orbax as the last step of a commit, at the step level (both atomicity modes).
_COMMIT_MARKER = 'commit_success.txt'


# Orbax's replica-parallel saving splits each replicated array among its replicas, and each
# (shape, sharding) pair costs a compiled slice program on the first save of a process: ~190 of
# them for the tiny demo recipe, 24 s of a 33 s first save on a 4-device CPU mesh (2.4 s blocking
# without). The split only pays off for big arrays; below this many bytes per replica, replica 0
# writes the whole array (norm scales, biases, small kernels: most of the leaves).
REPLICA_PARALLEL_MIN_BYTES = 4 << 20


def _register_array_handler() -> None:
  """Orbax's jax.Array handler with the replica-parallel threshold above (process-wide: Orbax
  reads type handlers from its global registry; otherwise the default handler's arguments)."""
  # The metadata store the default handler gets; orbax-checkpoint 0.12.8 has no public path to it.
  from orbax.checkpoint._src.metadata import array_metadata_store
  # The registry itself (not register_type_handler): replacing the default handler is intended, so
  # no "overriding jax.Array" warning line on every run.
  from orbax.checkpoint._src.serialization import type_handler_registry
  type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          array_metadata_store=array_metadata_store.Store(),
          min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES),
      override=True, ignore_warnings=True)


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Registers our item names up front.

  Without this, a fresh `CheckpointManager` (a resumed run) cannot read item metadata before a
  first save or restore, and it warns about every item it was not asked to restore.
  """
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  state_handler = ocp.StandardCheckpointHandler()
  registry.add(STATE_ITEM, ocp.args.StandardSave, state_handler)
  registry.add(STATE_ITEM, ocp.args.StandardRestore, state_handler)
  meta_handler = ocp.JsonCheckpointHandler()
  registry.add(META_ITEM, ocp.args.JsonSave, meta_handler)
  registry.add(META_ITEM, ocp.args.JsonRestore, meta_handler)
  if _GRAIN_ARGS is not None:
    iter_handler = grain_checkpoint.CheckpointHandler()
    registry.add(DATA_ITER_ITEM, _GRAIN_ARGS[0], iter_handler)
    registry.add(DATA_ITER_ITEM, _GRAIN_ARGS[1], iter_handler)
  return registry


def _as_step(step: Any) -> int:
  """Accepts Python / numpy / scalar jax integers; rejects floats, bools and negatives."""
  if isinstance(step, bool):
    raise CheckpointError(f'checkpoint step must be a non-negative integer, got {step!r}')
  try:
    value = operator.index(step)
  except TypeError:
    raise CheckpointError(
        f'checkpoint step must be a non-negative integer, got {step!r}') from None
  if value < 0:
    raise CheckpointError(f'checkpoint step must be a non-negative integer, got {value}')
  return int(value)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _path_str(path: tuple[str, ...]) -> str:
  return '/'.join(path) if path else '<root>'


def _leaf_shape(leaf: Any) -> tuple[int, ...] | None:
  """The shape a state leaf has on disk.

  Typed PRNG keys (`jax.random.key`) are stored as their raw key data, e.g. shape () becomes (2,).
  """
  dtype = getattr(leaf, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
  shape = getattr(leaf, 'shape', None)
  if shape is None:
    try:
      shape = np.shape(leaf)
    except Exception:  # pylint: disable=broad-except
      return None
  return tuple(shape)


class Checkpointer:
  """Saves and restores training state and data-iterator state; one instance per training job.

  Only one job may save into `directory` (Orbax's `CheckpointManager` is not multi-job safe); a
  second Checkpointer that only restores (e.g. an evaluator) is fine.

  `repair` (the training job that owns the directory): step directories that are incomplete when
  it opens, or found damaged by a restore, are moved to `<directory>/set_aside/` (never deleted)
  with one warning line each, so the run can save those steps again.
  """

  def __init__(self, directory: str | os.PathLike, *, save_every_steps: int,
               max_to_keep: int | None = 3, async_save: bool = True, repair: bool = False):
    if (isinstance(save_every_steps, bool) or not isinstance(save_every_steps, int)
        or save_every_steps < 1):
      raise CheckpointError(
          f'save_every_steps must be a positive integer, got {save_every_steps!r}')
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1):
      raise CheckpointError(
          f'max_to_keep must be a positive integer or None (keep all), got {max_to_keep!r}')
    directory = os.fspath(directory)
    if '://' not in directory:
      directory = os.path.abspath(os.path.expanduser(directory))
    self._directory = epath.Path(directory)
    self._save_every_steps = save_every_steps
    self._closed = False
    self._repair = repair
    self._async = async_save
    self._manifest_thread: threading.Thread | None = None
    self._manifest_error: tuple[int, BaseException] | None = None
    self.restored_step: int | None = None    # the step the last restore() used
    self._pending_step: int | None = None    # the step of a save that may still be running
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every_steps,  # informational: we decide and pass force=True
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    try:
      self._mngr = ocp.CheckpointManager(
          self._directory, options=options, handler_registry=_handler_registry())
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot open checkpoint directory {self._directory}: {type(e).__name__}: {e}') from e
    if repair:
      self._set_aside_incomplete()

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def _step_dir(self, step: int) -> epath.Path:
    # Default Orbax naming (no prefix, no zero padding), which is what we configure.
    return self._directory / str(step)

  def _committed(self, step: int) -> bool:
    """Orbax finished the step: its commit marker and our metadata item are there."""
    step_dir = self._step_dir(step)
    return (step_dir / _COMMIT_MARKER).exists() and (step_dir / META_ITEM).exists()

  def _is_complete(self, step: int) -> bool:
    """True if `step` was committed by Orbax, carries our metadata item and its checksums.

    Orbax on a local disk counts every directory named like a step as finished, whether or not
    it has the commit marker (only its GCS mode checks the marker), so we check it ourselves.
    """
    if not self._committed(step):
      return False
    return integrity.has_manifest(self._step_dir(step)) or self._format_version(step) < 2

  def _format_version(self, step: int) -> int:
    """The step's `meta` format version (a large number when unreadable: never 'legacy')."""
    try:
      meta = json.loads((self._step_dir(step) / META_ITEM / 'metadata').read_text())
      return int(meta['format_version'])
    except Exception:  # pylint: disable=broad-except
      return 1 << 30

  def _set_aside_incomplete(self) -> None:
    """Process 0 moves step directories that are not complete to set_aside/ (see the class doc)."""
    if jax.process_index() == 0:
      moved = False
      for step in self._mngr.all_steps():
        if not self._is_complete(step):
          target = integrity.set_aside(self._step_dir(step), 'incomplete')
          console.warning(f'checkpoint step {step} in {self._directory} is incomplete (an '
                          f'interrupted save or copy); moved it to {target}')
          moved = True
      if moved:
        self._mngr.reload()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('gigatok:set_aside_incomplete')
      self._mngr.reload()

  def all_steps(self) -> list[int]:
    """All complete checkpoint steps, ascending (a save still being written is not counted)."""
    self._check_open()
    return [s for s in sorted(self._mngr.all_steps()) if self._is_complete(s)]

  def latest_step(self) -> int | None:
    """The newest complete checkpoint step, or None.

    Does not wait: a save still being written in the background is not counted until it commits
    (call `wait_until_finished()` first to include it).
    """
    self._check_open()
    for step in sorted(self._mngr.all_steps(), reverse=True):
      if self._is_complete(step):
        return step
    return None

  def should_save(self, step: int) -> bool:
    """True on every `save_every_steps`-th step, and at a multi-host preemption sync point.

    Call it on every step on every process: JAX's preemption service makes all processes agree on
    one step to save at after any of them gets SIGTERM (single-process: never triggers).
    """
    step = _as_step(step)
    return step % self._save_every_steps == 0 or bool(self._mngr.reached_preemption(step))

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    """Saves `state` (and the iterator's position) as `step`; returns whether it saved.

    Off-interval steps are skipped unless `force` (SIGTERM, end of training). A step that already
    exists is skipped, not overwritten. With `async_save` the arrays are copied to host memory
    before this returns (the caller may donate or delete them) and written in the background.
    """
    self._check_open()
    step = _as_step(step)
    if not force and not self.should_save(step):
      return False
    # The previous save first (Orbax would wait for it too): its failure is news about its step.
    self.wait_until_finished()
    if step in self._mngr.all_steps():
      if self._is_complete(step):
        logger.info('Checkpoint step %d already exists in %s; not saving it again.', step,
                    self._directory)
        return False
      if not self._repair:
        raise CheckpointError(
            f'{self._step_dir(step)} exists but is not a complete checkpoint; delete it to save '
            f'step {step}')
      if jax.process_index() == 0:
        target = integrity.set_aside(self._step_dir(step), 'incomplete')
        console.warning(f'checkpoint step {step} in {self._directory} was incomplete; moved it '
                        f'to {target} and saving step {step} afresh')
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f'gigatok:set_aside_{step}')
      self._mngr.reload()
    _check_global_arrays(state)
    meta = {
        'format_version': FORMAT_VERSION,
        'step': step,
        'process_count': jax.process_count(),
        'has_data_iter': data_iterator is not None,
        'gigatok_jax_version': VERSION,
        'saved_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    items = {
        STATE_ITEM: ocp.args.StandardSave(state),
        META_ITEM: ocp.args.JsonSave(meta),
    }
    if data_iterator is not None:
      if _GRAIN_ARGS is None:  # pragma: no cover
        raise CheckpointError('saving a data iterator needs grain with Orbax support')
      items[DATA_ITER_ITEM] = _GRAIN_ARGS[0](data_iterator)
    try:
      saved = self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot save checkpoint step {step} to {self._directory}: {_one_line(e)}') from e
    if saved:
      self._pending_step = step
    if saved and jax.process_index() == 0:
      self._manifest_thread = threading.Thread(
          target=self._write_manifest_once_committed, args=(step,), daemon=True,
          name=f'gigatok-checksums-{step}')
      self._manifest_thread.start()
      if not self._async:
        self._finish_manifest()
    return bool(saved)

  def _write_manifest_once_committed(self, step: int) -> None:
    """Background thread of process 0: waits for Orbax to commit `step`, then writes its
    checksums. A save that fails never commits; its error surfaces from Orbax, not here."""
    try:
      delay = 0.02
      while not self._committed(step):
        if not self._mngr.is_saving_in_progress() and not self._committed(step):
          return
        time.sleep(delay)
        delay = min(2 * delay, 1.0)
      integrity.write_manifest(self._step_dir(step), step)
    except Exception as e:  # pylint: disable=broad-except
      self._manifest_error = (step, e)

  def _finish_manifest(self) -> None:
    """Waits for the checksums of the last save; a CheckpointError if writing them failed."""
    if self._manifest_thread is not None:
      self._manifest_thread.join()
      self._manifest_thread = None
    if self._manifest_error is not None:
      step, e = self._manifest_error
      self._manifest_error = None
      raise CheckpointError(f'writing the checksums of checkpoint step {step} in '
                            f'{self._directory} failed: {_one_line(e)}')

  def check_for_errors(self) -> None:
    """Raises CheckpointError at once if the background save has ended in an error (full disk,
    lost permissions); cheap when it is still running or all went well: call it every step."""
    if self._pending_step is not None and not self._mngr.is_saving_in_progress():
      self.wait_until_finished()

  def restore(self, abstract_state: Any, data_iterator: Any = None, *, step: int | None = None):
    """Restores the state at `step` (default: latest) into the layout of `abstract_state`.

    `abstract_state` has the structure of the saved state with `jax.ShapeDtypeStruct` leaves whose
    `sharding` says where each array goes: any mesh or device count works (Orbax reshards), and
    dtypes are cast. Tree structure and shapes must match the checkpoint, else CheckpointError.
    `data_iterator` is restored in place. Waits for this process's pending save first.
    """
    step, where, meta = self._resolve_step(step)
    items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not meta.get('has_data_iter', False):
        logger.warning('%s has no data iterator state; the data iterator starts from scratch.',
                       where)
      elif meta.get('process_count') != jax.process_count():
        portable = self._portable_iter_state(step, meta.get('process_count'))
        if portable is not None:
          data_iterator.set_state(portable)
        else:
          logger.warning(
              '%s was written by %s processes, this job has %d: the data iterator state cannot be '
              'reused and the data iterator starts from scratch.', where,
              meta.get('process_count'), jax.process_count())
      else:
        items[DATA_ITER_ITEM] = _GRAIN_ARGS[1](data_iterator)
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax refuses a tree or shape mismatch (strict restore) with a message that does not say
      # which side has what; name the parameter. Diagnosing only on failure skips reading every
      # array's metadata on the happy path (1068 arrays of the tiny recipe: 2-4 s per restore).
      try:
        self._check_compatible(step, abstract_state, where)
      except CheckpointError as mismatch:
        raise mismatch from e
      raise CheckpointError(f'cannot restore {where}: {type(e).__name__}: {e}') from e
    self.restored_step = step
    return restored[STATE_ITEM]

  def _resolve_step(self, step: int | None) -> tuple[int, str, dict]:
    """(step, its description, its metadata): the latest complete step (the same on every
    process) when `step` is None; a CheckpointError for a missing, unreadable or too new step."""
    self._check_open()
    self.wait_until_finished()
    if step is None:
      step = self._newest_intact_step()
    else:
      step = _as_step(step)
      if not self._is_complete(step):
        raise CheckpointError(
            f'no complete checkpoint for step {step} in {self._directory} '
            f'(complete steps: {self.all_steps() or "none"})')
      problem = self._damage(step)
      if problem is not None:
        raise CheckpointError(f'checkpoint step {step} in {self._directory} is damaged: {problem}')
    where = f'checkpoint step {step} in {self._directory}'

    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(
          **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'{where} is unreadable (metadata item "{META_ITEM}": {type(e).__name__}: {e})') from e
    if not isinstance(meta, dict) or not isinstance(meta.get('format_version'), int):
      raise CheckpointError(f'{where} is unreadable (bad metadata item "{META_ITEM}": {meta!r})')
    if meta['format_version'] > FORMAT_VERSION:
      raise CheckpointError(
          f'{where} has format version {meta["format_version"]}, newer than this gigatok_jax '
          f'supports ({FORMAT_VERSION}); upgrade gigatok_jax')

    return step, where, meta

  def _damage(self, step: int) -> str | None:
    """What is wrong with a complete step's files (None: intact, or format 1 without checksums)."""
    if not integrity.has_manifest(self._step_dir(step)):
      return None
    return integrity.verify(self._step_dir(step))

  def _newest_intact_step(self) -> int:
    """The newest complete step whose checksums hold; the same on every process (process 0 reads
    the files and decides). Newer damaged steps get one warning line each (and are set aside under
    `repair`); none intact -> CheckpointError listing what is wrong with each."""
    chosen, damaged = -1, []
    if jax.process_index() == 0:
      for step in reversed(self.all_steps()):
        problem = self._damage(step)
        if problem is None:
          chosen = step
          break
        damaged.append((step, problem))
    if jax.process_count() > 1:
      # All processes must restore the same step, even if their views of the disk differ.
      chosen = int(multihost_utils.broadcast_one_to_all(np.int64(chosen)))
    if chosen < 0:
      if damaged:
        raise CheckpointError(
            f'no intact checkpoint in {self._directory}: '
            + '; '.join(f'step {s}: {p}' for s, p in damaged)
            + ' (move those step directories away to start from scratch)')
      if jax.process_index() == 0:
        raise CheckpointError(f'no complete checkpoint in {self._directory}')
      raise CheckpointError(f'no intact checkpoint in {self._directory} (see process 0)')
    for step, problem in damaged:
      line = f'checkpoint step {step} in {self._directory} is damaged: {problem}; '
      if self._repair:
        line += f'moved it to {integrity.set_aside(self._step_dir(step), "damaged")} and '
      console.warning(line + f'using step {chosen}')
    if damaged and self._repair:
      self._mngr.reload()
    return chosen

  def restore_fields(self, abstract: Any, *, step: int | None = None) -> tuple[dict, int]:
    """(fields, step): only the named fields of the saved state, e.g. {'gen_params': tree} or
    {'params': tree}, restored onto the shardings of `abstract` (ShapeDtypeStruct trees).

    Inference needs the weights alone: the optimizer moments (twice the weights) and the data
    iterator are never read. Waits for this process's pending save first.
    """
    step, where, _ = self._resolve_step(step)
    abstract = dict(abstract)
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          self._step_dir(step) / STATE_ITEM,
          args=ocp.args.PyTreeRestore(
              item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
              partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      try:
        self._check_compatible(step, abstract, where, partial=True)
      except CheckpointError as mismatch:
        raise mismatch from e
      raise CheckpointError(f'cannot restore {where}: {type(e).__name__}: {e}') from e
    return {k: restored[k] for k in abstract}, step

  def _portable_iter_state(self, step: int, process_count: Any) -> dict | None:
    """Process 0's iterator state if it is valid for any process count, else None.

    Our pipeline (worker_count = 0) saves {'next_index': k}: k global batches consumed, the same
    number on every process and for any process count (data/pipeline.py), so a job with another
    process count can continue the same stream. Other states (grain workers) are per process.
    """
    path = self._step_dir(step) / DATA_ITER_ITEM / f'process_0-of-{process_count}.json'
    try:
      state = json.loads(path.read_text())
    except Exception:  # pylint: disable=broad-except
      return None
    if isinstance(state, dict) and set(state) == {'next_index'} and _is_int(state['next_index']):
      return state
    return None

  def _check_compatible(self, step: int, abstract_state: Any, where: str, *,
                        partial: bool = False) -> None:
    """Raises CheckpointError naming the first parameter whose path or shape differs between the
    checkpoint's metadata and `abstract_state` (`partial`: a subset of the saved fields is
    wanted, so extra saved parameters are fine); returns if they match."""
    try:
      item_metadata = self._mngr.item_metadata(step)[STATE_ITEM]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'{where} is unreadable (state metadata: {type(e).__name__}: {e})') from e
    if item_metadata is None:
      raise CheckpointError(f'{where} is unreadable (no "{STATE_ITEM}" item metadata)')
    saved_tree = getattr(item_metadata, 'tree', item_metadata)
    saved = ocp.tree.to_flat_dict(saved_tree)
    wanted = ocp.tree.to_flat_dict(abstract_state)
    hint = layer_layout.mismatch_hint([".".join(map(str, p)) for p in saved],
                                      [".".join(map(str, p)) for p in wanted])
    hint = hint or ' (did the model or optimizer config change since this checkpoint was written?)'
    for path, leaf in wanted.items():
      want_shape = _leaf_shape(leaf)
      if path not in saved:
        raise CheckpointError(
            f'{where} does not match the requested state: parameter '
            f"'{_path_str(path)}' (shape {want_shape}) is not in the checkpoint{hint}")
      saved_shape = getattr(saved[path], 'shape', None)
      if want_shape is not None and saved_shape is not None and tuple(saved_shape) != want_shape:
        raise CheckpointError(
            f'{where} does not match the requested state: parameter '
            f"'{_path_str(path)}' has shape {tuple(saved_shape)} in the checkpoint but "
            f'{want_shape} in the requested state{hint}')
    for path, leaf in saved.items():
      if path not in wanted and not partial:
        raise CheckpointError(
            f'{where} does not match the requested state: the checkpoint has parameter '
            f"'{_path_str(path)}' (shape {getattr(leaf, 'shape', None)}) that the requested state "
            f'lacks{hint}')

  def wait_until_finished(self) -> None:
    """Blocks until a background save has committed; raises CheckpointError if it failed."""
    if self._closed:
      return
    step, self._pending_step = self._pending_step, None
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      what = 'a checkpoint' if step is None else f'checkpoint step {step}'
      raise CheckpointError(f'saving {what} to {self._directory} failed: {_one_line(e)}; the '
                            'newest complete checkpoint stays the latest') from e
    self._finish_manifest()

  def close(self) -> None:
    """Waits for pending saves, then releases Orbax's threads. Idempotent."""
    if self._closed:
      return
    try:
      self.wait_until_finished()
    finally:
      self._closed = True
      self._mngr.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _check_open(self) -> None:
    if self._closed:
      raise CheckpointError(f'the Checkpointer for {self._directory} is closed')


def _one_line(e: BaseException) -> str:
  """`Type: first line of the message`, at most 300 characters (TensorStore errors run long)."""
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:300] if text else ""}'


def _check_global_arrays(state: Any) -> None:
  """Multi-process: Orbax cannot save process-local jax.Arrays; name the first such leaf."""
  if jax.process_count() == 1:
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
      raise CheckpointError(
          f"cannot save state leaf '{jax.tree_util.keystr(path)}': it is a process-local array "
          f'(sharding {leaf.sharding}) in a {jax.process_count()}-process job; make it a global '
          'array (jax.device_put with a NamedSharding over the mesh) or a numpy array')
