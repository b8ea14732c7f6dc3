"""`python -m gigatok_jax.convert`: import an official GigaTok tokenizer / GPT checkpoint (or export
a run to the reference layout); the command line is convert/cli.py. The teacher converters keep
their own modules (`convert.dinov2`, `convert.lpips`, `convert.inception`)."""

import sys

from gigatok_jax.convert.cli import main

if __name__ == "__main__":
  sys.exit(main())
