import jax

# Fake CPU devices for multi-device tests; must run before any JAX op. Tests that need a single
# device pick `jax.devices()[:1]`.
jax.config.update("jax_num_cpu_devices", 8)
