"""What every training loop does around its step: preemption, checkpoint cadence, clean shutdown."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from gigatok_jax import pretrained
from gigatok_jax.train import reporting


class PreemptionFlag:
  """Set by SIGTERM (cloud preemption, `kill`, SLURM): the loop saves a checkpoint and exits."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def is_set(self) -> bool:
    # In multi-process runs every process must agree, or they would save different steps.
    if jax.process_count() > 1:
      flags = multihost_utils.process_allgather(np.array([self.event.is_set()], np.int32))
      return bool(np.max(flags))
    return self.event.is_set()


def checkpoint_or_stop(ckpt, step: int, end: int, state, data_iter, preempted: PreemptionFlag) -> bool:
  """Saves on checkpoint steps, at the end and on SIGTERM; True when the loop must stop now."""
  preempt = preempted.is_set()
  # One save per step: a preemption on a checkpoint step reuses the save already under way.
  if ckpt.should_save(step) or step == end or preempt:
    ckpt.save(step, state, data_iter, force=True)
  if preempt:
    ckpt.wait_until_finished()
    reporting.info(f"SIGTERM received: saved a checkpoint at step {step}; exiting")
  return preempt


def close(ckpt, reporter) -> None:
  """Waits for the last (async) save, then closes the checkpointer and the writers."""
  ckpt.wait_until_finished()
  ckpt.close()
  reporter.close()


def initial_state(task, workdir: str, init_from: str = ""):
  """A fresh run's state: random init, with the weights of `init_from` or of the workdir's own
  imported weights (a converted release) put in when there are any."""
  state = task.init_state()
  path = pretrained.find(workdir, init_from)
  if path is None:
    return state
  info = pretrained.read_info(path)
  reporting.info(f"starting from the weights in {path} ({info.get('source', '?')}, "
                 f"{', '.join(info.get('items', []))})")
  with jax.set_mesh(task.mesh):
    return pretrained.initialize_state(state, task.abstract_state, path)
