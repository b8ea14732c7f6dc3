"""The one training loop, shared by the tokenizer and the GPT: resume or start, step, report,
checkpoint, stop on SIGTERM.

What differs per model lives in its task (train/tokenizer.py, train/gpt.py): `TokenizerTask` /
`GPTTask` build the state and the jitted step, and a small hooks object says what to feed the
step, what to log and what to do after a step (reconstruction grids, validation loss).

Guarantees: a checkpoint holds the whole training state, the step and the data iterator; a rerun
resumes from the latest complete one exactly (bit-identical to an uninterrupted run); SIGTERM
(preemption, `kill`, SLURM) saves a checkpoint and exits; every process of a multi-process job
agrees on when to stop.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from gigatok_jax import console, distributed, parallel, runs
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
    console.info(f"SIGTERM received: saved a checkpoint at step {step}; exiting")
  return preempt


def task_and_hooks(config, mesh) -> tuple[Any, Any]:
  """The recipe's task and loop hooks (by `config.task`)."""
  if config.get("task") == "gpt":
    from gigatok_jax.train import gpt  # pylint: disable=import-outside-toplevel
    task = gpt.GPTTask(config, mesh)
    return task, gpt.GPTHooks(task)
  from gigatok_jax.train import tokenizer  # pylint: disable=import-outside-toplevel
  task = tokenizer.TokenizerTask(config, mesh)
  return task, tokenizer.TokenizerHooks(task)


def train(config, workdir: str, *, progress: bool = True, stop_at_step: int | None = None,
          devices=None):
  """Trains (or resumes) the recipe's model in `workdir`; returns the final state.

  `stop_at_step` ends this run early (with a checkpoint) without changing the schedule, e.g. for a
  time-boxed job that a later run resumes. `devices` restricts the mesh to a subset (tests).
  """
  mesh = parallel.make_mesh(config.mesh, devices)
  if jax.process_index() == 0:
    runs.write_config(config, workdir)   # what later modes (extract_codes, sample) read
  task, hooks = task_and_hooks(config, mesh)
  console.info(f"mesh {dict(mesh.shape)}; {task.describe()}")
  extra_args = hooks.load_extra_args()
  data_iter = hooks.train_iterator()
  ckpt = runs.open_checkpoints(workdir, config)
  start = runs.training_state(task, workdir, ckpt=ckpt, data_iter=data_iter,
                              init_from=config.init_from)
  if start.source.startswith("checkpoint"):
    console.info(f"resuming from {start.source} in {workdir}")
  elif start.source != "random":
    console.info(f"starting from the weights in {start.source}")
  state = start.state
  step = int(jax.device_get(state.step))
  end = min(config.total_steps, stop_at_step) if stop_at_step is not None else config.total_steps
  reporter = reporting.Reporter(workdir, config.total_steps, step, progress=progress,
                                log_keys=hooks.log_keys, labels=getattr(hooks, "log_labels", None))
  hooks.start(state, step, reporter)
  steps = {}   # phase -> the train step (one compile per phase)
  metrics, first_step = None, step
  with PreemptionFlag() as preempted, jax.set_mesh(mesh):
    while step < end:
      batch = parallel.global_batch(next(data_iter), mesh, task.rules)
      phase = task.phase(step)
      compiled = phase not in steps   # this step compiles: its time stays out of rates and ETA
      if compiled:
        what = "train step" + (f" ({phase.describe()})" if phase is not None else "")
        steps[phase] = distributed.StartTogether(task.jitted_train_step(phase), what, config,
                                                 on_compiled=console.log_compiled(what))
      state, metrics = steps[phase](state, batch, *extra_args)
      step += 1
      # The first step of a run is logged too: it is the baseline later values are read against.
      if step % config.log_every_steps == 0 or step == end or step == first_step + 1:
        host_metrics = jax.device_get(metrics)   # waits for the step: the clock reads after it
        reporter.step(step, compiled=compiled)
        reporter.scalars(step, host_metrics, config.global_batch_size,
                         tokens_per_image=hooks.tokens_per_image)
      else:
        reporter.step(step, compiled=compiled)
      hooks.after_step(state, step, end, reporter)
      if checkpoint_or_stop(ckpt, step, end, state, data_iter, preempted):
        break
  ckpt.wait_until_finished()   # the last (async) save
  ckpt.close()
  reporter.close()
  if metrics is not None:
    console.info(reporting.final_line(step, config.total_steps, hooks.final_line(metrics)))
  return state
