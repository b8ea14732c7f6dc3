"""gigatok_jax: GigaTok-style visual tokenizers and LlamaGen-style AR generators in JAX/Flax."""

__version__ = "0.1.0"
