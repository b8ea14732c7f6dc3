"""`python -m gigatok_jax.weights ...`: runs the command line in cli.py, exits with its status."""

import sys

from gigatok_jax.weights.cli import main

if __name__ == "__main__":
  sys.exit(main())
