"""The Python API: `Tokenizer.load(src)`, `Generator.load(src, tokenizer=...)` and `run(recipe,
workdir, mode)` (the command line's modes, e.g. training, from Python).

Also importable from the package top level (`gigatok_jax.Tokenizer`, `gigatok_jax.Generator`).
"""

from gigatok_jax.api.generator import Generator
from gigatok_jax.api.inputs import InputError
from gigatok_jax.api.run import run
from gigatok_jax.api.tokenizer import Tokenizer

__all__ = ["Generator", "InputError", "Tokenizer", "run"]
