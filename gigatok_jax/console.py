"""Console output of every mode: one-line messages and progress bars, from process 0 only."""

from __future__ import annotations

import time

import jax


def info(message: str) -> None:
  """A console line from process 0 (absl INFO is silenced by default: Orbax is too chatty)."""
  if jax.process_index() == 0:
    print(f"[gigatok {time.strftime('%H:%M:%S')}] {message}", flush=True)


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "batch"):
  """A tqdm bar on process 0 when `enabled` (a disabled bar elsewhere: same calls, no output)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
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
