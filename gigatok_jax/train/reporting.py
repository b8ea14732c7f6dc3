"""What a training run reports: TensorBoard scalars and images (our own event writer, no
TensorFlow), PNG grids in <workdir>/images/, and console progress: a tqdm bar on a terminal, one
plain line per log interval anywhere else (log files, pipes, batch jobs).

Rates and the ETA leave out the steps that compiled (the first step of a run, the first step of a
new loss phase): a compile takes minutes, a step milliseconds, so counting it would make the ETA of
the first hour wrong by the compile time times the number of steps.

Only process 0 writes anything; other processes keep the same calls and stay silent.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from gigatok_jax import console, fileio, runs
from gigatok_jax import tensorboard_writer as tb


class StepClock:
  """Seconds per step, from the steps that did not compile.

  `record(step, compiled)` is called once per finished step. The time since the previous record is
  charged to the steps in between unless this step compiled (then it is dropped, and the clock
  restarts from here). Two totals are kept: since the start (for the ETA) and since the last
  `interval()` call (for the steps/s written at each log line).
  """

  def __init__(self, start_step: int, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._last_time, self._last_step = clock(), start_step
    self.total_seconds = self.total_steps = 0.0
    self._interval_seconds = self._interval_steps = 0.0

  def record(self, step: int, compiled: bool = False) -> None:
    now = self._clock()
    if not compiled:
      seconds, steps = now - self._last_time, step - self._last_step
      self.total_seconds += seconds
      self.total_steps += steps
      self._interval_seconds += seconds
      self._interval_steps += steps
    self._last_time, self._last_step = now, step

  def steps_per_sec(self) -> float | None:
    """Over the whole run so far (compiles left out); None before a step without a compile."""
    if self.total_steps <= 0 or self.total_seconds <= 0:
      return None
    return self.total_steps / self.total_seconds

  def eta_seconds(self, step: int, total_steps: int) -> float | None:
    rate = self.steps_per_sec()
    return None if rate is None else max(total_steps - step, 0) / rate

  def interval(self) -> float | None:
    """steps/s since the previous call (compiles left out), and restarts that count."""
    seconds, steps = self._interval_seconds, self._interval_steps
    self._interval_seconds = self._interval_steps = 0.0
    return steps / seconds if steps > 0 and seconds > 0 else None


def _format(value: float) -> str:
  return f"{value:.4g}"


class Reporter:
  """Scalars and images to TensorBoard and the console (process 0), and progress with an ETA.

  `log_keys`: the metrics shown on the console (TensorBoard gets all of them); `labels`: console
  names for some of them (e.g. psnr -> "train-batch PSNR"). `terminal` (default: whether stdout and
  stderr are terminals) picks the tqdm bar over plain lines; `clock` is for tests.
  """

  def __init__(self, workdir: str, total_steps: int, start_step: int, *, progress: bool = True,
               log_keys: Sequence[str] = (), labels: Mapping[str, str] | None = None,
               terminal: bool | None = None, clock: Callable[[], float] = time.perf_counter):
    self.is_main = jax.process_index() == 0
    self.workdir = workdir
    self.total_steps = total_steps
    self.log_keys = tuple(log_keys)
    self.labels = dict(labels or {})
    self.clock = StepClock(start_step, clock)
    self.writer = tb.EventWriter(workdir) if self.is_main else None
    if terminal is None:
      terminal = console.is_terminal()
    self.bar = None
    if self.is_main and progress and terminal:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      # tqdm's own rate and remaining time would count the compile: ours go in the postfix.
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                      desc="train", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                               "{n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    self._metrics_text = ""

  # --- per step -----------------------------------------------------------------------------------
  def step(self, step: int, *, compiled: bool = False) -> None:
    """Call once per finished step; `compiled`: this step compiled (its time is left out)."""
    self.clock.record(step, compiled)
    if self.bar is not None:
      self.bar.set_postfix_str(self._progress_text(step), refresh=False)
      self.bar.update(step - self.bar.n)

  def eta_text(self, step: int) -> str:
    eta = self.clock.eta_seconds(step, self.total_steps)
    return "no ETA yet (the first step compiles)" if eta is None else \
        f"ETA {console.format_duration(eta)}"

  def _progress_text(self, step: int) -> str:
    rate = self.clock.steps_per_sec()
    parts = [self._metrics_text] if self._metrics_text else []
    if rate is not None:
      parts.append(f"{rate:.3g} steps/s")
    parts.append(self.eta_text(step))
    return ", ".join(parts)

  def _metrics_line(self, values: Mapping[str, float]) -> str:
    return ", ".join(f"{self.labels.get(k, k)} {_format(values[k])}"
                     for k in self.log_keys if k in values)

  # --- log steps ----------------------------------------------------------------------------------
  def scalars(self, step: int, metrics: Mapping, images_per_step: int,
              tokens_per_image: int | None = None) -> dict:
    """The step's metrics (host values) plus throughput: TensorBoard, and the console line."""
    values = {k: float(v) for k, v in metrics.items()}
    steps_per_sec = self.clock.interval()
    if steps_per_sec is not None:   # none at a log step right after a compile
      values["steps_per_sec"] = steps_per_sec
      values["images_per_sec"] = steps_per_sec * images_per_step
      if tokens_per_image:
        values["tokens_per_sec"] = values["images_per_sec"] * tokens_per_image
    if self.writer is not None:
      self.writer.scalars(step, values)
    self._metrics_text = self._metrics_line(values)
    if self.bar is not None:
      self.bar.set_postfix_str(self._progress_text(step))
    elif self.is_main:
      console.info(self.plain_line(step, values))
    return values

  def plain_line(self, step: int, values: Mapping[str, float]) -> str:
    """e.g. "step 50: gen_loss 0.51, train-batch PSNR 12.1 | 5% of 1000 steps, 3.2 steps/s, ETA
    0:04:56" (steps/s over the last interval; the ETA from the mean rate since the start)."""
    progress = [f"{100 * step / max(self.total_steps, 1):.0f}% of {self.total_steps} steps"]
    if "steps_per_sec" in values:
      progress.append(f"{values['steps_per_sec']:.3g} steps/s")
    progress.append(self.eta_text(step))
    metrics = self._metrics_line(values)
    return f"step {step}: " + (f"{metrics} | " if metrics else "") + ", ".join(progress)

  def images(self, step: int, name: str, grid: np.ndarray) -> str | None:
    """A uint8 grid to TensorBoard and <workdir>/images/<name>_<step>.png; returns the PNG path."""
    if not self.is_main:
      return None
    png = tb.encode_png(grid)
    self.writer.image(step, name, grid, png=png)
    path = os.path.join(runs.images_dir(self.workdir), f"{name}_{step:08d}.png")
    with fileio.atomic_write(path, "wb") as f:
      f.write(png)
    return path

  def extra_scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Scalars outside the step's metrics (eval PSNR, validation loss): TensorBoard only."""
    if self.writer is not None:
      self.writer.scalars(step, dict(values))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()


def final_line(step: int, total_steps: int, summary: str) -> str:
  """The run's last console line: "done: step 1000, <summary>" (or "stopped" before the end)."""
  return f"{'done' if step >= total_steps else 'stopped'}: step {step} of {total_steps}, {summary}"
