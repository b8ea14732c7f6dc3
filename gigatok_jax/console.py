"""Console output of every mode: one-line messages and progress, from process 0 only.

On a terminal, progress is a tqdm bar. Anywhere else (a log file, a pipe, a batch job) it is plain
lines: a redirected tqdm bar would be one physical line of carriage-return updates.
"""

from __future__ import annotations

import datetime
import sys
import time

import jax


def is_terminal() -> bool:
  """True when both stdout (our lines) and stderr (tqdm's bars) are terminals."""
  try:
    return sys.stdout.isatty() and sys.stderr.isatty()
  except (AttributeError, ValueError):   # replaced or closed streams
    return False


def info(message: str) -> None:
  """A console line from process 0 (absl INFO is silenced by default: Orbax is too chatty)."""
  if jax.process_index() != 0:
    return
  line = f"[gigatok {time.strftime('%H:%M:%S')}] {message}"
  tqdm_module = sys.modules.get("tqdm")
  if tqdm_module is not None:
    # Above any open bar (tqdm clears and redraws it) rather than glued to its end.
    tqdm_module.tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
  else:
    print(line, flush=True)


def warning(message: str) -> None:
  """A warning line from process 0, on stderr: `[gigatok HH:MM:SS] warning: ...`."""
  if jax.process_index() != 0:
    return
  sys.stdout.flush()
  print(f"[gigatok {time.strftime('%H:%M:%S')}] warning: {message}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
  """H:MM:SS (days shown as hours), e.g. 0:04:56."""
  return str(datetime.timedelta(seconds=max(0, round(seconds))))


class PlainProgress:
  """`progress_bar` off a terminal: the same calls (update, set_postfix, close), printed as a
  plain line at most every `interval_s` seconds. Its rate and ETA are measured from the first
  update on, so the compile before the first batch is not in them."""

  def __init__(self, total: int | None, desc: str, unit: str, *, interval_s: float = 60.0,
               clock=time.monotonic):
    self.total, self.desc, self.unit, self.n = total, desc, unit, 0
    self.interval_s, self._clock = interval_s, clock
    self._first = None          # (time, n) at the first update
    self._last_print = None
    self._postfix = ""

  def update(self, n: int = 1) -> None:
    self.n += n
    now = self._clock()
    if self._first is None:
      self._first = (now, self.n)
      self._last_print = now   # the first line comes `interval_s` after the first batch
      return
    if now - self._last_print >= self.interval_s:
      self._last_print = now
      info(self.line(now))

  def line(self, now: float) -> str:
    text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
    t0, n0 = self._first or (now, self.n)
    if now > t0 and self.n > n0:
      rate = (self.n - n0) / (now - t0)
      text += f", {rate:.3g} {self.unit}/s"
      if self.total:
        text += f", ETA {format_duration((self.total - self.n) / rate)}"
    return text + (f", {self._postfix}" if self._postfix else "")

  def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
    del refresh
    items = dict(ordered_dict or {}, **kwargs)
    self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "batch"):
  """A tqdm bar on process 0 when `enabled` and on a terminal; plain lines when not on a terminal;
  a disabled bar elsewhere (same calls, no output)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  if enabled and jax.process_index() == 0 and not is_terminal():
    return PlainProgress(total, desc, unit)
  return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True,
              disable=not enabled or jax.process_index() != 0)


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
