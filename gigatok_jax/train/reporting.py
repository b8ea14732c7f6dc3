"""What a training run reports: TensorBoard scalars and images (clu metric writers), PNG grids in
<workdir>/images/, a progress bar with ETA on a terminal and plain log lines otherwise.

Only process 0 writes anything; other processes get a logging-only writer and no progress bar.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from gigatok_jax import images as image_lib
from gigatok_jax import runs
from gigatok_jax.console import info


class Reporter:
  """Scalars and images to TensorBoard + console (process 0), and a progress bar with ETA."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, *, progress: bool = True):
    self.is_main = jax.process_index() == 0
    self.workdir = workdir
    from clu import metric_writers  # imports TensorFlow; keep it off the import path of the library
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_main)
    self.bar = None
    if self.is_main and progress:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                      smoothing=0.1, desc="train")
    self._last_time = time.time()
    self._last_step = start_step

  def step(self, step: int, postfix: dict | None = None) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      if postfix:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def scalars(self, step: int, metrics: dict, images_per_step: int,
              tokens_per_image: int | None = None) -> dict:
    now = time.time()
    steps = max(step - self._last_step, 1)
    rates = {"steps_per_sec": steps / max(now - self._last_time, 1e-9)}
    rates["images_per_sec"] = rates["steps_per_sec"] * images_per_step
    if tokens_per_image:
      rates["tokens_per_sec"] = rates["images_per_sec"] * tokens_per_image
    self._last_time, self._last_step = now, step
    values = {k: float(v) for k, v in metrics.items()}
    values.update(rates)
    self.writer.write_scalars(step, dict(values))   # the async writer reads its own copy
    if self.is_main and self.bar is None:
      info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))
    return values

  def images(self, step: int, name: str, grid: np.ndarray) -> str | None:
    if not self.is_main:
      return None
    self.writer.write_images(step, {name: grid[None]})
    return image_lib.save_png(grid, os.path.join(runs.images_dir(self.workdir),
                                                 f"{name}_{step:08d}.png"))

  def extra_scalars(self, step: int, values: dict) -> None:
    """Scalars outside the step's metrics (eval PSNR, validation loss): TensorBoard + log file."""
    self.writer.write_scalars(step, dict(values))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    self.writer.flush()
    self.writer.close()
