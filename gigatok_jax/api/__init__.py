"""The Python API: `Tokenizer.load(src)` and `Generator.load(src, tokenizer=...)`.

Also importable from the package top level (`gigatok_jax.Tokenizer`, `gigatok_jax.Generator`).
"""

from gigatok_jax.api.generator import Generator
from gigatok_jax.api.inputs import InputError
from gigatok_jax.api.tokenizer import Tokenizer

__all__ = ["Generator", "InputError", "Tokenizer"]
