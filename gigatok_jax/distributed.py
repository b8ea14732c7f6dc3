"""Multi-process (multi-host) start-up: `jax.distributed.initialize` before any JAX backend use.

JAX must connect the processes before the first device query, or each process sees only its own
devices and trains alone. `initialize(config)` decides whether the job is multi-process:

1. Explicit config: `distributed.coordinator_address` set, or `distributed.num_processes` > 1.
   Unset values ('' / -1) are left to JAX (env `JAX_COORDINATOR_ADDRESS`, cluster detection).
2. Else the environment of a known launcher, where JAX detects everything itself:
   SLURM with more than one task (`SLURM_NTASKS` > 1 under `SLURM_JOB_ID`), a multi-worker Cloud TPU
   VM (`TPU_WORKER_HOSTNAMES` with more than one host, or `MEGASCALE_COORDINATOR_ADDRESS`), or
   `JAX_COORDINATOR_ADDRESS` set.
3. Else a single process: nothing to do.

Failure handling (bounded, no hang): a collective whose peer died fails at once (gloo: connection
reset), and a peer that stops answering is declared dead after `distributed.heartbeat_timeout_s` by
the coordination service, which fails the others' pending work. `main.py` then calls
`abort_on_failure`: one line naming the process, exit status 1.

Start-up skew: a device collective's first run over a set of devices builds its communicator, and
gloo (CPU) gives up after a fixed 30 s if a peer has not arrived, which a slower compile on a loaded
machine exceeds. `StartTogether` compiles a program's first call ahead of time and then waits at a
coordination-service barrier (timeout `distributed.initialization_timeout_s`), so every process
reaches the program's collectives within moments of the others.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gigatok_jax.errors import ConfigError, UserError


def _cfg(config, key: str, default):
  section = config.get("distributed", None) if hasattr(config, "get") else None
  if section is None:
    return default
  value = section.get(key, default)
  return default if value is None else value


def cluster_env() -> str | None:
  """The multi-process launcher found in the environment (JAX auto-detects these), or None."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return "SLURM"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "Cloud TPU multislice"
  return None


def initialize(config) -> bool:
  """Connects this process to the job's others if the job is multi-process; returns whether it did.

  Call it first thing (before `jax.devices()` or any array op). Idempotent.
  """
  if jax.distributed.is_initialized():
    return True
  address = str(_cfg(config, "coordinator_address", "") or "")
  num = int(_cfg(config, "num_processes", -1))
  pid = int(_cfg(config, "process_id", -1))
  explicit = bool(address) or num > 1
  launcher = None if explicit else cluster_env()
  if not explicit and launcher is None:
    return False
  if num == 1 and not address:
    return False
  kwargs = dict(
      initialization_timeout=int(_cfg(config, "initialization_timeout_s", 300)),
      heartbeat_timeout_seconds=int(_cfg(config, "heartbeat_timeout_s", 100)))
  if explicit:
    kwargs.update(coordinator_address=address or None, num_processes=num if num > 0 else None,
                  process_id=pid if pid >= 0 else None)
  # Cross-process collectives on CPU need an implementation; gloo is JAX's default on recent
  # versions, but set it where the flag exists so older defaults ('none') do not hang or fail.
  try:
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # pragma: no cover - flag renamed or removed in a future JAX
    pass
  where = f"coordinator {address}" if address else f"{launcher or 'JAX'} auto-detection"
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:  # unreachable coordinator, timeout, bad address
    raise ConfigError("distributed", f"cannot start the multi-process job ({where}): "
                      f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
  logging.info("distributed: process %d of %d (%s)", jax.process_index(), jax.process_count(),
               where)
  return True


def abort_on_failure(error: BaseException, code: int = 1) -> None:
  """Multi-process only: one line naming this process and the error, then exit `code` at once.

  Exiting without Python's atexit hooks skips JAX's shutdown barrier, which would wait for a
  process that died (and then abort with a C++ stack dump). Single-process: returns.
  """
  if not jax.distributed.is_initialized():
    return
  text = str(error).strip()
  known = isinstance(error, UserError) or code != 1   # user error, divergence, preemption
  if not known:
    text = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
  if not known or "JaxRuntimeError" in text:
    text += " (a collective failed: another process of this job probably died; see its log)"
  logging.flush()
  print(f"error: process {jax.process_index()} of {jax.process_count()}: {text}", file=sys.stderr,
        flush=True)
  sys.stdout.flush()
  os._exit(code)


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: float) -> None:
  """Waits until every process reaches this point (coordination service; no device collective).

  Every process must call the barriers of a run in the same order: the id is `name` plus a running
  count. Single-process: returns at once.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  # pylint: disable-next=import-outside-toplevel
  from jax._src import distributed as jax_distributed    # the client that jax.distributed started
  barrier_id = f"gigatok:{name}:{next(_barrier_ids)}"
  try:
    jax_distributed.global_state.client.wait_at_barrier(barrier_id, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"the other processes did not reach '{name}' within {timeout_s:.0f} s "
                    f"(distributed.initialization_timeout_s): "
                    f"{str(e).strip().splitlines()[0]}") from e


_BACKGROUND_COMPILES = threading.Lock()


class StartTogether:
  """A jitted function whose first call compiles ahead of time, then (multi-process) waits at a
  barrier for the other processes before it runs; later calls go straight to the jitted function.

  `on_compiled(compiled, seconds)` is called once after the compile (e.g. to log memory). The jit
  call that follows `lower(...).compile()` reuses both the trace and the executable (measured:
  the first tokenizer step after it runs no slower than a later one).

  `compile_in_background(mesh, *abstract_args)` starts that compile in a thread instead, and the
  first call waits for it: the training loop compiles the steps of a run's later phases this way,
  so that on accelerators the host compiles while the devices train instead of stalling the run at
  the phase switch.
  """

  def __init__(self, jitted: Callable, name: str, config=None,
               on_compiled: Callable[[Any, float], None] | None = None):
    self._jitted, self._name, self._on_compiled = jitted, name, on_compiled
    self._timeout_s = float(_cfg(config, "initialization_timeout_s", 300))
    self._started = False
    self._background: threading.Thread | None = None
    self._background_error: BaseException | None = None

  def _compile(self, args, kwargs) -> None:
    start = time.time()
    compiled = self._jitted.lower(*args, **kwargs).compile()
    if self._on_compiled is not None:
      self._on_compiled(compiled, time.time() - start)

  def compile_in_background(self, mesh, *args, **kwargs) -> None:
    """Compiles for these arguments (arrays or `abstract_like` shapes) in a daemon thread under
    `mesh`; a daemon, so that a run stopping early (SIGTERM) does not wait for it."""
    def work():
      try:
        with _BACKGROUND_COMPILES, jax.set_mesh(mesh):   # one at a time: each holds host memory
          self._compile(args, kwargs)
      except BaseException as e:  # pylint: disable=broad-except
        self._background_error = e   # raised by the first call, in the loop's thread
    self._background = threading.Thread(target=work, name=f"compile {self._name}", daemon=True)
    self._background.start()

  def __call__(self, *args, **kwargs):
    if not self._started:
      multi = jax.process_count() > 1
      if self._background is not None:
        self._background.join()
        if self._background_error is not None:
          raise self._background_error
      elif multi or self._on_compiled is not None:
        self._compile(args, kwargs)
      if multi:
        barrier(f"compiled {self._name}", self._timeout_s)
      self._started = True
    return self._jitted(*args, **kwargs)


def abstract_like(tree: Any) -> Any:
  """`tree` with every jax.Array replaced by its shape, dtype, weak type and sharding: what
  `lower` needs, without holding (or touching, once donated) the buffers."""
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding,
                                  weak_type=x.aval.weak_type)
    return x
  return jax.tree.map(one, tree)


def gather(tree: Any) -> Any:
  """Host numpy copies of (possibly multi-process sharded) jax.Arrays, whole on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)
