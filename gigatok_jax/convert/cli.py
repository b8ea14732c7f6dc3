"""The command line of `python -m gigatok_jax.convert`: import a released GigaTok checkpoint as a
run directory, or export a run to the reference layout (the work is convert/release.py's).

Import takes `--config.<key>=<value>` overrides on the recipe config (dotted keys as in
`python -m gigatok_jax.main`, e.g. `--config.model.enc_heads=10`; values are Python literals, text
for text keys): the sizes the file does not determine, above all the head counts of transformers
whose sizes are not the reference's (release.py's module docstring has the rules).

Local paths only, for --src and --out: copy a file from a bucket first, and copy the converted
run directory to a bucket afterwards (a gs:// path is refused with one line).
"""

from __future__ import annotations

import argparse
import sys

from gigatok_jax.errors import UserError

PREFIX = "--config."


def split_overrides(extra: list[str]) -> tuple[dict[str, str], list[str]]:
  """`--config.a.b=v` / `--config.a.b v` items of `extra` as {'a.b': 'v'}, and what is left."""
  overrides, rest, i = {}, [], 0
  while i < len(extra):
    item = extra[i]
    if item.startswith(PREFIX):
      key, eq, value = item[len(PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
          raise UserError(f"{item}: no value (write {item}=VALUE)")
        value, i = extra[i + 1], i + 1
      if not key:
        raise UserError(f"{item}: no config key after {PREFIX}")
      overrides[key] = value
    else:
      rest.append(item)
    i += 1
  return overrides, rest


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert",
      description="Import an official GigaTok tokenizer / GPT checkpoint as a gigatok_jax run "
                  "directory, or export a run to the reference layout.",
      epilog="--config.<key>=<value> (import only, repeatable): override a key of the recipe "
             "config, e.g. --config.model.enc_heads=10 --config.model.dec_heads=12 for a file "
             "whose transformer sizes are not the reference's.")
  parser.add_argument("--src", required=True,
                      help="import: the .pt/.pth/.safetensors file; export: a run directory")
  parser.add_argument("--out", required=True,
                      help="import: the run directory to create; export: a .safetensors/.pt file")
  parser.add_argument("--export", action="store_true", help="ours -> reference layout")
  parser.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                      help="which weights of a training checkpoint (auto: ema, else model)")
  parser.add_argument("--recipe", default="",
                      help="configs/<recipe>.py[:variant] whose sizes equal the file's; default: "
                           "the sizes come from the file, the rest from the closest recipe")
  parser.add_argument("--tokenizer_workdir", default="",
                      help="GPT import: the (converted) tokenizer run whose codes it models")
  args, extra = parser.parse_known_args(argv)
  try:
    overrides, rest = split_overrides(extra)
  except UserError as e:
    parser.error(str(e))
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  if args.export and overrides:
    parser.error("--config.* overrides are for imports; an export writes the run as it is")
  from gigatok_jax.convert import release  # pylint: disable=import-outside-toplevel
  from gigatok_jax import fileio  # pylint: disable=import-outside-toplevel
  try:
    for path in (args.src, args.out, args.tokenizer_workdir):
      fileio.local_only(path, "python -m gigatok_jax.convert")
    if args.export:
      release.export_run(args.src, args.out)
    else:
      release.import_checkpoint(args.src, args.out, weights=args.weights, recipe=args.recipe,
                                overrides=overrides, tokenizer_workdir=args.tokenizer_workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
