"""gigatok_jax: GigaTok-style visual tokenizers and LlamaGen-style AR generators in JAX/Flax.

  import gigatok_jax
  tok = gigatok_jax.Tokenizer.load("/tmp/gigatok_demo")
  codes = tok.encode("photo.jpg"); images = tok.decode(codes)

`Tokenizer`, `Generator`, `run` and `InputError` (gigatok_jax/api/) are imported on first use, so that
`import gigatok_jax` stays light (the command line and the converters do not need them).
"""

from gigatok_jax import absent_tpu as _absent_tpu
from gigatok_jax import xla_cpu_flags as _xla_cpu_flags

# Before any backend starts: XLA reads XLA_FLAGS once (see xla_cpu_flags.py for why and how to opt out).
_xla_cpu_flags.configure()
# libtpu installed on a machine without a TPU: JAX would start it only to print warnings (absent_tpu.py).
_absent_tpu.configure()

from gigatok_jax.version import VERSION as __version__  # noqa: E402

_API = ("Tokenizer", "Generator", "InputError", "run")


def __getattr__(name: str):
  if name in _API:
    from gigatok_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f"module 'gigatok_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_API))
