"""The XLA:CPU flag defaults applied on import (gigatok_jax/xla_cpu_flags.py)."""

import os

from gigatok_jax import xla_cpu_flags


def test_appends_ynn_off_for_affected_jaxlib():
  env = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
  assert xla_cpu_flags.configure(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == ("--xla_backend_optimization_level=0 "
                              "--xla_cpu_experimental_ynn_fusion_type=")
  # Idempotent: a second call changes nothing.
  assert not xla_cpu_flags.configure(env, jaxlib_version="0.10.2")


def test_respects_user_value_opt_out_and_other_versions():
  env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  assert not xla_cpu_flags.configure(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
  env = {"GIGATOK_KEEP_XLA_FLAGS": "1"}
  assert not xla_cpu_flags.configure(env, jaxlib_version="0.10.2")
  assert "XLA_FLAGS" not in env
  env = {}
  assert not xla_cpu_flags.configure(env, jaxlib_version="0.11.0")
  assert env == {}


def test_applied_in_this_process():
  # conftest imports JAX before gigatok_jax but starts no backend, so the import hook applied.
  if xla_cpu_flags._jaxlib_version().startswith("0.10."):
    assert "--xla_cpu_experimental_ynn_fusion_type=" in os.environ["XLA_FLAGS"]
