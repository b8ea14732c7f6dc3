"""The one training loop, shared by the tokenizer and the GPT: resume or start, step, report,
checkpoint, stop on SIGTERM.

What differs per model lives in its task (train/tokenizer.py, train/gpt.py): `TokenizerTask` /
`GPTTask` build the state and the jitted step, and a small hooks object says what to feed the
step, what to log and what to do after a step (reconstruction grids, validation loss).

Guarantees: a checkpoint holds the whole training state, the step and the data iterator; a rerun
resumes from the newest intact one exactly (bit-identical to an uninterrupted run); SIGTERM
(preemption, `kill`, SLURM) saves a checkpoint and exits with preemption.EXIT_PREEMPTED; a failed
background save stops the run at the next step; non-finite losses or weights stop the run
(errors.Diverged) and are never saved; every process of a multi-process job agrees on when to stop.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gigatok_jax import console, distributed, parallel, preemption, runs
from gigatok_jax.errors import Diverged
from gigatok_jax.train import reporting


def _not_finite(host_metrics: dict) -> list[str]:
  return [f"{k}={float(v):.4g}" for k, v in host_metrics.items()
          if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.inexact)
          and not np.isfinite(v)]


def check_finite(step: int, metrics, ckpt) -> None:
  """Raises Diverged when this step's metrics hold NaN or Inf; the message names them and the
  checkpoint that stays latest.

  The metrics cover the state: they hold the losses and the gradient norms (gen/disc_grad_norm,
  grad_norm). Weights that turned non-finite give a non-finite loss on every later step, and an
  update that makes them so comes from a non-finite gradient norm on its own step; so checking the
  metrics of the step about to be saved keeps any non-finite state out of the checkpoints. (A
  jitted isfinite over the whole state cost 10-20 s of compile for the demo's 1056 arrays.)"""
  bad = _not_finite(jax.device_get(metrics))
  if bad:
    latest = ckpt.latest_step()
    kept = (f"checkpoint step {latest} stays the latest" if latest is not None
            else "no checkpoint was saved")
    raise Diverged(f"training diverged by step {step}: {', '.join(bad)} not finite; this state "
                   f"is not saved and {kept} (lower optim.lr, or check the data)")


def checkpoint_or_stop(ckpt, step: int, end: int, state, data_iter, metrics) -> bool:
  """Saves on checkpoint steps, at the end and on SIGTERM (only a finite state); True when the
  loop must stop now (SIGTERM: after the save, `Preempted` is raised by the caller)."""
  ckpt.check_for_errors()     # a background save that failed stops the run here
  preempt = preemption.received()
  # One save per step: a preemption on a checkpoint step reuses the save already under way.
  if ckpt.should_save(step) or step == end or preempt:
    check_finite(step, metrics, ckpt)
    ckpt.save(step, state, data_iter, force=True)
  return preempt


def later_phases(task, step: int, end: int) -> list:
  """The phases that steps step+1..end-1 enter after the phase of `step`, in order."""
  out = []
  for boundary in sorted(b for b in task.phase_boundaries() if step < b < end):
    phase = task.phase(boundary)
    if phase != task.phase(step) and phase not in out:
      out.append(phase)
  return out


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
  if step >= config.total_steps:
    console.info(f"nothing to train: resumed at step {step} and total_steps is "
                 f"{config.total_steps} (raise --config.total_steps to train further)")
  reporter = reporting.Reporter(workdir, config.total_steps, step, progress=progress,
                                log_keys=hooks.log_keys, labels=getattr(hooks, "log_labels", None))
  hooks.start(state, step, reporter)
  def make_step(phase):
    what = "train step" + (f" ({phase.describe()})" if phase is not None else "")
    return distributed.StartTogether(task.jitted_train_step(phase), what, config,
                                     on_compiled=console.log_compiled(what))

  steps = {}   # phase -> the train step (one compile per phase)
  ran = set()  # the phases that have run a step
  metrics, first_step, preempted = None, step, False
  with preemption.deferred(), jax.set_mesh(mesh):
    while step < end:
      batch = parallel.global_batch(next(data_iter), mesh, task.rules)
      phase = task.phase(step)
      if not steps:
        # The first phase compiles now; the later ones in a background thread at the same time.
        steps[phase] = make_step(phase)
        abstract_args = distributed.abstract_like((state, batch, *extra_args))
        for later in later_phases(task, step, end):
          steps[later] = make_step(later)
          steps[later].compile_in_background(mesh, *abstract_args)
      elif phase not in steps:   # (a phase no boundary announced)
        steps[phase] = make_step(phase)
      compiled = phase not in ran   # this step compiles (or waits for its compile): its time
      ran.add(phase)                # stays out of rates and ETA
      state, metrics = steps[phase](state, batch, *extra_args)
      step += 1
      # The first step of a run is logged too: it is the baseline later values are read against.
      if step % config.log_every_steps == 0 or step == end or step == first_step + 1:
        host_metrics = jax.device_get(metrics)   # waits for the step: the clock reads after it
        check_finite(step, host_metrics, ckpt)
        reporter.step(step, compiled=compiled)
        reporter.scalars(step, host_metrics, config.global_batch_size,
                         tokens_per_image=hooks.tokens_per_image)
      else:
        reporter.step(step, compiled=compiled)
      hooks.after_step(state, step, end, reporter)
      if checkpoint_or_stop(ckpt, step, end, state, data_iter, metrics):
        preempted = True
        break
  ckpt.wait_until_finished()   # the last (async) save
  ckpt.close()
  reporter.close()
  if preempted:
    raise preemption.Preempted(f"SIGTERM received: saved a checkpoint at step {step} in "
                               f"{runs.checkpoints_dir(workdir)}; run the same command to resume")
  if metrics is not None:
    console.info(reporting.final_line(step, config.total_steps, hooks.final_line(metrics)))
  return state
