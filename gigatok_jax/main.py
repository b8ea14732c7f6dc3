r"""gigatok_jax command line: one function per mode.

  python -m gigatok_jax.main --config=configs/tokenizer_ss.py --workdir=DIR [--mode=train]
      [--config.optim.lr=2e-4 ...]

Modes: train, summary, aot (both recipe kinds), reconstruct, eval, prepare_data (tokenizer recipes),
eval, extract_codes, sample, probe, ar_probe (GPT recipes). Multi-process jobs (SLURM, TPU VMs, or
--config.distributed.*) connect first: see distributed.py. User errors (config, data, checkpoints)
print one line naming the culprit and exit with status 2.
"""

from __future__ import annotations

import os
import sys

# TensorFlow (imported by clu's TensorBoard writer) prints C++ banners at INFO; keep warnings.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from gigatok_jax.errors import UserError

MODES = ("train", "reconstruct", "eval", "summary", "prepare_data", "extract_codes", "sample",
         "probe", "ar_probe", "aot")
GPT_MODES = ("train", "summary", "aot", "extract_codes", "sample", "eval", "probe", "ar_probe")
TOKENIZER_MODES = ("train", "reconstruct", "eval", "summary", "aot", "prepare_data")

config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/tokenizer_ss.py[:tiny].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, images.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_list("aot_targets", ["v5e-256", "v5p-64", "v6e-64"],
                  "--mode=aot: TPU slices (v5e-256, v5p-64, v6e-64, v4-32) or topologies (v5e:4x4).")
flags.DEFINE_string("aot_output", "", "--mode=aot: also write the plan rows to this JSON file.")
FLAGS = flags.FLAGS


def _need_workdir() -> str:
  if not FLAGS.workdir:
    raise UserError(f"--workdir is required for --mode={FLAGS.mode}")
  return FLAGS.workdir


def run(mode: str, config, workdir: str | None) -> None:
  from gigatok_jax import validate
  task = config.get("task", "tokenizer")
  allowed = GPT_MODES if task == "gpt" else TOKENIZER_MODES
  if mode not in allowed:
    raise UserError(f"--mode={mode} does not apply to a {task} recipe (its modes: "
                    f"{', '.join(allowed)})")
  if mode == "aot":
    from gigatok_jax import aot
    aot.run(config, FLAGS.aot_targets, FLAGS.aot_output)
  elif mode == "summary":
    from gigatok_jax import summary
    validate.validate(config, check_data=False)
    print(summary.summarize(config))
  elif mode == "prepare_data":
    from gigatok_jax.data import prepare
    print(prepare.run_prepare(config.data))
  elif mode == "train" and task == "gpt":
    validate.validate(config)
    from gigatok_jax.train import gpt_trainer
    gpt_trainer.train(config, workdir, progress=FLAGS.progress)
  elif mode == "train":
    validate.validate(config)
    from gigatok_jax.train import tokenizer_trainer
    tokenizer_trainer.train(config, workdir, progress=FLAGS.progress)
  elif mode == "reconstruct":
    validate.validate(config, check_data=not config.data.reconstruct_input)
    from gigatok_jax import reconstruct
    reconstruct.run(config, workdir)
  elif mode == "eval" and task == "gpt":
    validate.validate(config, check_data=False)
    from gigatok_jax.evaluate import gpt_eval
    gpt_eval.run(config, workdir)
  elif mode == "eval":
    validate.validate(config, check_teachers=False)
    from gigatok_jax.evaluate import tokenizer_eval
    tokenizer_eval.run(config, workdir, progress=FLAGS.progress)
  elif mode == "extract_codes":
    validate.validate(config, check_data=False)
    from gigatok_jax import extract_codes
    extract_codes.run(config, workdir, progress=FLAGS.progress)
  elif mode == "ar_probe":
    validate.validate(config)
    from gigatok_jax.evaluate import ar_probe
    ar_probe.run(config, workdir, progress=FLAGS.progress)
  elif mode == "probe":
    validate.validate(config)
    from gigatok_jax.evaluate import linear_probe
    linear_probe.run(config, workdir)
  elif mode == "sample":
    validate.validate(config, check_data=False)
    from gigatok_jax import sample_images
    sample_images.run(config, workdir, progress=FLAGS.progress)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax and grain log every save at INFO; keep the console to our own progress and results.
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  if config is None:
    print("error: --config is required (e.g. --config=configs/demo.py)", file=sys.stderr)
    sys.exit(2)
  from gigatok_jax import distributed
  try:
    # Before anything touches a JAX backend: a multi-process job must connect its processes first.
    distributed.initialize(config)
    workdir = None if FLAGS.mode in ("summary", "prepare_data", "aot") else _need_workdir()
    run(FLAGS.mode, config, workdir)
  except UserError as e:
    distributed.abort_on_failure(e, code=2)
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    distributed.abort_on_failure(e)
    raise


if __name__ == "__main__":
  app.run(main)
