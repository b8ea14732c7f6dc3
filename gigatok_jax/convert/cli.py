"""The command line of `python -m gigatok_jax.convert`: import a released GigaTok checkpoint as a
run directory, or export a run to the reference layout (the work is convert/release.py's)."""

from __future__ import annotations

import argparse
import sys

from gigatok_jax.errors import UserError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert",
      description="Import an official GigaTok tokenizer / GPT checkpoint as a gigatok_jax run "
                  "directory, or export a run to the reference layout.")
  parser.add_argument("--src", required=True,
                      help="import: the .pt/.pth/.safetensors file; export: a run directory")
  parser.add_argument("--out", required=True,
                      help="import: the run directory to create; export: a .safetensors/.pt file")
  parser.add_argument("--export", action="store_true", help="ours -> reference layout")
  parser.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                      help="which weights of a training checkpoint (auto: ema, else model)")
  parser.add_argument("--recipe", default="",
                      help="configs/<recipe>.py[:variant]; default: inferred from the shapes")
  parser.add_argument("--tokenizer_workdir", default="",
                      help="GPT import: the (converted) tokenizer run whose codes it models")
  args = parser.parse_args(argv)
  from gigatok_jax.convert import release  # pylint: disable=import-outside-toplevel
  try:
    if args.export:
      release.export_run(args.src, args.out)
    else:
      release.import_checkpoint(args.src, args.out, weights=args.weights, recipe=args.recipe,
                                tokenizer_workdir=args.tokenizer_workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
