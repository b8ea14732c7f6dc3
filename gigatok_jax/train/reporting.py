"""Console progress, TensorBoard scalars/images (clu metric writers) and PNG grids.

Only process 0 writes anything; other processes get a logging-only writer and no progress bar.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging
from PIL import Image


def info(message: str) -> None:
  """A console line from process 0 (absl INFO is silenced by default: Orbax is too chatty)."""
  if jax.process_index() == 0:
    print(f"[gigatok {time.strftime('%H:%M:%S')}] {message}", flush=True)


def log_compiled(what: str):
  """An `on_compiled(compiled, seconds)` callback: one line with compile time and memory per device."""
  def log(compiled, seconds: float) -> None:
    line = f"{what} compiled in {seconds:.1f} s"
    mem = compiled.memory_analysis()
    if mem is not None:   # None where the backend does not report it
      out = mem.output_size_in_bytes - mem.alias_size_in_bytes          # donated inputs are reused
      args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
      line += (f"; {(args + temp + out) / 2**30:.2f} GiB per device: {args / 2**30:.2f} arguments, "
               f"{temp / 2**30:.2f} temporaries, {out / 2**30:.2f} new outputs")
    info(line)
  return log


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-image PSNR (dB) after quantising [-1, 1] images to uint8, as image tools report it."""
  a8 = to_uint8(a).astype(np.float64)
  b8 = to_uint8(b).astype(np.float64)
  mse = np.mean(np.square(a8 - b8), axis=tuple(range(1, a8.ndim)))
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def image_grid(images: np.ndarray, per_row: int = 8, pad: int = 2) -> np.ndarray:
  """uint8 (N, H, W, 3) images -> one uint8 grid image, row-major, white padding."""
  n, h, w, _ = images.shape
  cols = max(1, min(per_row, n))
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray, per_row: int = 8,
                    pad: int = 2) -> np.ndarray:
  """uint8 grid: each row pair is originals above their reconstructions. Inputs (N, H, W, 3) in [-1, 1]."""
  a, b = to_uint8(originals), to_uint8(reconstructions)
  n = a.shape[0]
  cols = min(per_row, n)
  blank = np.full_like(a[:1], 255)
  rows = []
  for start in range(0, n, cols):
    fill = [blank] * (cols - min(cols, n - start))
    rows += [a[start:start + cols], *fill, b[start:start + cols], *fill]
  return image_grid(np.concatenate(rows), per_row=cols, pad=pad)


def save_png(image: np.ndarray, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image).save(path)
  return path


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
    return save_png(grid, os.path.join(self.workdir, "images", f"{name}_{step:08d}.png"))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    self.writer.flush()
    self.writer.close()
