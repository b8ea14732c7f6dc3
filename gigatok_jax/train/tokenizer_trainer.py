"""Tokenizer training loop: data -> jitted step -> logs, image grids, checkpoints, resume, SIGTERM.

The loop is short on purpose; the step itself lives in `tokenizer_step.py`.
"""

from __future__ import annotations


import jax
import numpy as np
from jax.experimental import multihost_utils

from gigatok_jax import checkpointing, config_base, distributed, parallel
from gigatok_jax.data import pipeline
from gigatok_jax.train import reporting, run_control
from gigatok_jax.train.tokenizer_step import TokenizerState, TokenizerTask


def grid_data_config(data_cfg):
  """The data config whose eval split feeds the grids: the train shards when no eval_path is set."""
  if data_cfg.source == "array_record" and not data_cfg.eval_path:
    data_cfg = data_cfg.copy_and_resolve_references()
    data_cfg.eval_path = data_cfg.train_path
  return data_cfg


def first_eval_batch(config) -> np.ndarray:
  """The fixed images shown in reconstruction grids (deterministic eval-split center crops)."""
  n = config.eval_num_images
  # Every process reads all n images: the reconstruction runs on the global mesh and takes the
  # same (replicated) input everywhere.
  it = pipeline.make_eval_iterator(grid_data_config(config.data), batch_size=n, num_images=n,
                                   process_index=0, process_count=1)
  batch = next(iter(it))
  return batch["image"][batch["mask"]]


def train(config, workdir: str, *, progress: bool = True, stop_at_step: int | None = None,
          devices=None) -> TokenizerState:
  """Trains (or resumes) a tokenizer in `workdir`; returns the final state.

  `stop_at_step` ends this run early (with a checkpoint) without changing the schedule, e.g. for a
  time-boxed job that a later run resumes. `devices` restricts the mesh to a subset (tests).
  """
  mesh = parallel.make_mesh(config.mesh, devices)
  if jax.process_index() == 0:
    config_base.write_run_config(config, workdir)   # what later modes (extract_codes, sample) read
  task = TokenizerTask(config, mesh)
  reporting.info(f"mesh {dict(mesh.shape)}; generator {task.num_params / 1e6:.2f}M params, "
                 f"discriminator {task.num_disc_params / 1e6:.2f}M params")
  frozen = task.load_teachers()
  for name in task.teachers.names:
    reporting.info(f"frozen {name}: {config.teachers[name + '_path']}")

  data_iter = pipeline.make_train_iterator(config.data, global_batch_size=config.global_batch_size,
                                           seed=config.seed)
  ckpt = checkpointing.Checkpointer(f"{workdir}/checkpoints",
                                    save_every_steps=config.checkpoint_every_steps,
                                    max_to_keep=config.max_checkpoints_to_keep)
  latest = ckpt.latest_step()
  if latest is not None:
    reporting.info(f"resuming from checkpoint step {latest} in {workdir}")
    state = ckpt.restore(task.abstract_state, data_iter)
  else:
    state = run_control.initial_state(task, workdir, config.init_from)
  step = int(jax.device_get(state.step))
  total = config.total_steps
  end = min(total, stop_at_step) if stop_at_step is not None else total

  eval_images = first_eval_batch(config)
  reconstruct = distributed.StartTogether(task.jitted_reconstruct(), "reconstruct", config)
  steps = {}   # phase -> the train step (one compile per loss phase)
  reporter = reporting.Reporter(workdir, total, step, progress=progress)

  def write_grid(state) -> float:
    """Grid of the fixed eval images + their PSNR (dB, uint8 like image tools), logged as eval_psnr."""
    params = state.ema_params if state.ema_params is not None else state.gen_params
    recon = reconstruct(params, eval_images)[0]
    if not recon.is_fully_addressable:   # multi-process: gather the batch-sharded output
      recon = multihost_utils.process_allgather(recon, tiled=True)
    recon = np.asarray(jax.device_get(recon))
    reporter.images(step, "reconstruction", reporting.comparison_grid(eval_images, recon))
    value = float(np.mean(reporting.psnr_uint8(eval_images, recon)))
    reporter.writer.write_scalars(step, {"eval_psnr": value})
    reporting.info(f"step {step}: eval PSNR {value:.2f} dB on {len(eval_images)} fixed images")
    return value

  metrics = None
  first_step = step
  if step == 0:
    write_grid(state)   # the untrained baseline, for comparison with later grids
  with run_control.PreemptionFlag() as preempted, jax.set_mesh(mesh):
    while step < end:
      batch = parallel.global_batch(next(data_iter), mesh, task.rules)
      phase = task.phase(step)
      if phase not in steps:
        what = (f"train step (GAN {'on' if phase[0] else 'off'}, "
                f"aux losses {'on' if phase[1] else 'off'})")
        steps[phase] = distributed.StartTogether(task.jitted_train_step(phase), what, config,
                                                 on_compiled=reporting.log_compiled(what))
      state, metrics = steps[phase](state, batch, frozen)
      step += 1
      # The first step of a run is logged too: it is the baseline the later PSNR is read against.
      if step % config.log_every_steps == 0 or step == end or step == first_step + 1:
        values = reporter.scalars(step, jax.device_get(metrics), config.global_batch_size)
        reporter.step(step, {k: values[k] for k in ("gen_loss", "psnr", "codebook_usage")})
      else:
        reporter.step(step)
      if step % config.image_every_steps == 0 or step == total:
        write_grid(state)
      if run_control.checkpoint_or_stop(ckpt, step, end, state, data_iter, preempted):
        break
  run_control.close(ckpt, reporter)
  if metrics is not None:
    reporting.info(f"stopped at step {step}: PSNR {float(metrics['psnr']):.2f} dB, codebook usage "
                   f"{float(metrics['codebook_usage']):.4f}; grids in {workdir}/images")
  return state
