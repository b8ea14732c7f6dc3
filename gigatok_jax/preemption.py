"""SIGTERM (cloud preemption, SLURM time limits, `kill`): save what can be saved, then exit with
EXIT_PREEMPTED so that schedulers can tell "requeue me" from "finished" (0) and from a user
error (2).

Two behaviours, depending on where the signal lands:
  - inside the training loop (`deferred()`): the handler only sets a flag; the loop saves a
    checkpoint at the end of the current step, then raises `Preempted`;
  - anywhere else (start-up, restore, compile, eval-only modes): nothing new exists to save, so
    the handler raises `Preempted` at once.
`main.py` turns `Preempted` into one line and exit status EXIT_PREEMPTED.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". The launch scripts
# requeue on it.
EXIT_PREEMPTED = 75


class Preempted(BaseException):
  """SIGTERM arrived; the message says what was saved. A BaseException (like KeyboardInterrupt),
  so that the `except Exception` blocks that turn library failures into one-line errors do not
  swallow it when the signal lands inside them (e.g. while a checkpoint directory opens)."""


_received = threading.Event()


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook once SIGTERM has stopped start-up. The interruption leaves objects half
  built, whose destructors then fail (e.g. a grain iterator without its `_closed` attribute), and
  a Preempted raised inside a gc callback is dropped by Python: each would print an "Exception
  ignored" traceback above the one `preempted:` line the run ends with."""
  del unraisable


def _raise_now(signum, frame):  # pylint: disable=unused-argument
  _received.set()
  sys.unraisablehook = _quiet_unraisable
  raise Preempted("SIGTERM received before training started; nothing new to save")


def _set_flag(signum, frame):  # pylint: disable=unused-argument
  _received.set()


def install() -> None:
  """Makes SIGTERM raise `Preempted` in the main thread (call once, early, from main)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_now)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Inside: SIGTERM only sets the flag that `received()` reads (the training loop)."""
  # A SIGTERM before this point normally raised Preempted already. Python drops an exception
  # raised by a signal handler when the handler runs inside a garbage-collection callback or a
  # `__del__` ("Exception ignored in: <function _xla_gc_callback>"), so the flag is the record
  # that counts: the loop must not start after a swallowed SIGTERM.
  if _received.is_set():
    raise Preempted("SIGTERM received before training started; nothing new to save")
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, _set_flag)
  try:
    yield
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    _received.clear()    # a later run in the same process (a notebook, a test) starts afresh


def received() -> bool:
  """Whether SIGTERM arrived; in multi-process jobs, whether it arrived at any process (all of
  them must agree, or they would save different steps)."""
  if jax.process_count() > 1:
    flags = multihost_utils.process_allgather(np.array([_received.is_set()], np.int32))
    return bool(np.max(flags))
  return _received.is_set()
