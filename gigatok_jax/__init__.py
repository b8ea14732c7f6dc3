"""gigatok_jax: GigaTok-style visual tokenizers and LlamaGen-style AR generators in JAX/Flax."""

from gigatok_jax import xla_cpu_flags as _xla_cpu_flags

# Before any backend starts: XLA reads XLA_FLAGS once (see xla_cpu_flags.py for why and how to opt out).
_xla_cpu_flags.configure()

__version__ = "0.1.0"
