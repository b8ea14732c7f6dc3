r"""gigatok_jax command line: parse the flags, connect the processes, run one mode.

  python -m gigatok_jax.main --config=configs/tokenizer_ss.py --workdir=DIR [--mode=train]
      [--config.optim.lr=2e-4 ...]

The modes and the recipe kinds they apply to are listed once, in `gigatok_jax/modes/__init__.py`.
Multi-process jobs (SLURM, TPU VMs, or --config.distributed.*) connect first: see distributed.py.
Exit status: 0 done; 2 a user error (config, data, checkpoints: one line naming the culprit);
3 training diverged (NaN/Inf; nothing of it saved); 75 preempted by SIGTERM (a checkpoint was saved
where there was something to save: run the same command again); 1 anything else (a bug: traceback).
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys


def _preempted_while_importing(signum, frame):  # pylint: disable=unused-argument
  # Nothing exists to save yet; the same status as any other preemption (preemption.py).
  print("preempted: SIGTERM received during start-up; nothing to save", file=sys.stderr,
        flush=True)
  os._exit(75)


# First, before the slow imports (jax: seconds): main() installs the real handler.
signal.signal(signal.SIGTERM, _preempted_while_importing)

# TensorFlow is imported only by the optional tfds data path ([tfds] extra); its C++ INFO banners
# (oneDNN, CPU instructions) stay off there too. Warnings still print.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from gigatok_jax import modes, preemption
from gigatok_jax.errors import EXIT_DIVERGED, EXIT_USER_ERROR, Diverged, UserError

config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/tokenizer_ss.py[:tiny].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, images.")
flags.DEFINE_enum("mode", "train", modes.NAMES, "What to do.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_list("aot_targets", ["v5e-256", "v5p-64", "v6e-64"],
                  "--mode=aot: TPU slices (v5e-256, v5p-64, v6e-64, v4-32) or topologies (v5e:4x4).")
flags.DEFINE_string("aot_output", "", "--mode=aot: also write the plan rows to this JSON file.")
FLAGS = flags.FLAGS


class _OneLineOrbaxErrors(std_logging.Filter):
  """Orbax logs a failed background save (a full disk) from each of its threads with a
  traceback; we report the failure ourselves in one `error:` line naming the step, so its log
  records keep their first line only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR and "/orbax/" in record.pathname.replace("\\", "/"):
      lines = record.getMessage().splitlines()
      record.msg, record.args = (lines[0][:300] if lines else ""), ()
      record.exc_info = record.exc_text = record.stack_info = None
    return True


def _fail(code: int, prefix: str, message: str) -> None:
  logging.flush()
  sys.stdout.flush()
  print(f"{prefix}: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """Our command-line checks first (one line, exit 2), then absl's parse (any refusal: one line)."""
  from gigatok_jax.config import command_line  # pylint: disable=import-outside-toplevel
  try:
    command_line.check_argv(argv[1:])
  except UserError as e:
    _fail(EXIT_USER_ERROR, "error", str(e))
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  - absl / config_flags refusals
    text = str(e).strip().splitlines()
    _fail(EXIT_USER_ERROR, "error", text[0] if text else type(e).__name__)
  return []


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax and grain log every save at INFO; keep the console to our own progress and results.
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_OneLineOrbaxErrors())
  config = FLAGS.config
  if config is None:
    print("error: --config is required (e.g. --config=configs/demo.py)", file=sys.stderr)
    sys.exit(2)
  from gigatok_jax import distributed  # pylint: disable=import-outside-toplevel
  preemption.install()
  try:
    # Before anything touches a JAX backend: a multi-process job must connect its processes first.
    distributed.initialize(config)
    modes.run_mode(FLAGS.mode, config, FLAGS.workdir, progress=FLAGS.progress,
                   options={"aot_targets": FLAGS.aot_targets, "aot_output": FLAGS.aot_output})
  except (UserError, Diverged, preemption.Preempted) as e:
    code, prefix = EXIT_USER_ERROR, "error"
    if isinstance(e, Diverged):
      code = EXIT_DIVERGED
    elif isinstance(e, preemption.Preempted):
      code, prefix = preemption.EXIT_PREEMPTED, "preempted"
    distributed.abort_on_failure(e, code=code)
    _fail(code, prefix, str(e))
  except Exception as e:  # pylint: disable=broad-except
    distributed.abort_on_failure(e)
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
