"""Shared test setup: 8 fake CPU devices, fast XLA compiles, a persistent compilation cache.

Runs before any test module imports JAX ops. Tests that need a single device pick
`jax.devices()[:1]`; subprocess tests inherit the environment set here (see `subprocess_env`).
"""

import os
import sys
import tempfile

# Compile time dominates this suite; LLVM optimisation level 0 halves it and only changes speed.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = os.path.join(tempfile.gettempdir(), "gigatok_jax_test_compile_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# grain's worker processes read absl flags; under pytest nothing parses them.
flags.FLAGS.mark_as_parsed()



@pytest.fixture
def repo_dir() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The fast tier (`pytest -m "not slow"`, about 5 minutes on 2 cores) leaves out the files that
# train several tiny runs end to end or launch processes; the full suite runs everything.
SLOW_FILES = {"test_train_loop.py", "test_ar_pipeline.py", "test_multihost.py", "test_teachers.py",
              "test_sharding.py"}


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end training runs and multi-process launches")


def pytest_collection_modifyitems(config, items):
  for item in items:
    if os.path.basename(str(item.fspath)) in SLOW_FILES:
      item.add_marker(pytest.mark.slow)
