"""GPT training loop: code batches -> jitted step -> logs, validation loss, checkpoints, resume.

Same guarantees as the tokenizer trainer (run_control, Checkpointer and Reporter are shared):
the checkpoint holds parameters, optimizer state, step and the data iterator, a rerun resumes from
the latest one exactly, SIGTERM saves and exits.
"""

from __future__ import annotations

import jax

from gigatok_jax import checkpointing, config_base, distributed, parallel
from gigatok_jax.data import codes
from gigatok_jax.train import reporting, run_control
from gigatok_jax.train.gpt_step import GPTState, GPTTask


def validation(task: GPTTask, params, config, step_fn=None) -> dict[str, float] | None:
  """Mean loss / accuracy over the first `eval_num_batches` validation batches (None: no split)."""
  if not config.data.eval_codes_path:
    return None
  it = codes.make_eval_iterator(config.data, global_batch_size=config.global_batch_size)
  step_fn = step_fn or task.jitted_eval_step()
  sums, n = {}, 0
  for batch in it:
    if n == config.eval_num_batches:
      break
    m = jax.device_get(step_fn(params, parallel.global_batch(batch, task.mesh, task.rules)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {f"val_{k}": v / max(n, 1) for k, v in sums.items()} if n else None


def train(config, workdir: str, *, progress: bool = True, stop_at_step: int | None = None,
          devices=None) -> GPTState:
  """Trains (or resumes) a GPT in `workdir`; `stop_at_step` ends this run early with a checkpoint."""
  mesh = parallel.make_mesh(config.mesh, devices)
  if jax.process_index() == 0:
    config_base.write_run_config(config, workdir)   # what later modes (extract_codes, sample) read
  task = GPTTask(config, mesh)
  reporting.info(f"mesh {dict(mesh.shape)}; GPT {task.num_params / 1e6:.2f}M params, "
                 f"{config.model.num_tokens} tokens, vocabulary {config.model.vocab_size}")
  data_iter = codes.make_train_iterator(config.data, global_batch_size=config.global_batch_size,
                                        seed=config.seed)
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints",
                                    save_every_steps=config.checkpoint_every_steps,
                                    max_to_keep=config.max_checkpoints_to_keep)
  if ckpt.latest_step() is not None:
    reporting.info(f"resuming from checkpoint step {ckpt.latest_step()} in {workdir}")
    state = ckpt.restore(task.abstract_state, data_iter)
  else:
    state = run_control.initial_state(task, workdir, config.init_from)
  step = int(jax.device_get(state.step))
  end = min(config.total_steps, stop_at_step) if stop_at_step is not None else config.total_steps
  reporter = reporting.Reporter(workdir, config.total_steps, step, progress=progress)
  train_step = distributed.StartTogether(task.jitted_train_step(), "train step", config,
                                         on_compiled=reporting.log_compiled("train step"))
  eval_step = distributed.StartTogether(task.jitted_eval_step(), "eval step", config)
  tokens_per_step = config.global_batch_size * config.model.num_tokens
  metrics, first_step = None, step
  with run_control.PreemptionFlag() as preempted, jax.set_mesh(mesh):
    while step < end:
      batch = parallel.global_batch(next(data_iter), mesh, task.rules)
      state, metrics = train_step(state, batch)
      step += 1
      if step % config.log_every_steps == 0 or step == end or step == first_step + 1:
        values = reporter.scalars(step, jax.device_get(metrics), config.global_batch_size,
                                  tokens_per_image=config.model.num_tokens)
        reporter.step(step, {k: values[k] for k in ("loss", "accuracy")})
      else:
        reporter.step(step)
      if step % config.eval_every_steps == 0 or step == end:
        val = validation(task, state.params, config, eval_step)
        if val is not None:
          reporter.writer.write_scalars(step, val)
          reporting.info(f"step {step}: validation loss {val['val_loss']:.4f}, "
                         f"accuracy {val['val_accuracy']:.4f}")
      if run_control.checkpoint_or_stop(ckpt, step, end, state, data_iter, preempted):
        break
  run_control.close(ckpt, reporter)
  if metrics is not None:
    reporting.info(f"stopped at step {step}: loss {float(metrics['loss']):.4f}, accuracy "
                   f"{float(metrics['accuracy']):.4f} ({tokens_per_step} tokens per step)")
  return state
