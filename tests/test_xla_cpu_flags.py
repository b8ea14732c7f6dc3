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


def test_a_recipe_can_keep_xlas_default():
  """`xla_cpu_ynnpack = True` (the demo recipe) takes our flag back out; a user's own value and
  recipes without the key keep theirs."""
  import ml_collections
  on = ml_collections.ConfigDict({"xla_cpu_ynnpack": True})
  off = ml_collections.ConfigDict({"xla_cpu_ynnpack": False})
  env = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
  assert xla_cpu_flags.configure(env, jaxlib_version="0.10.2")
  assert not xla_cpu_flags.use_recipe_choice(off, env)
  assert not xla_cpu_flags.use_recipe_choice(ml_collections.ConfigDict(), env)
  assert xla_cpu_flags.use_recipe_choice(on, env)
  assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=0"
  assert not xla_cpu_flags.use_recipe_choice(on, env)
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}   # set by the user, not by us
  assert not xla_cpu_flags.configure(user, jaxlib_version="0.10.2")
  assert not xla_cpu_flags.use_recipe_choice(on, user)
  assert user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_the_demo_recipe_runs_with_xlas_default(tmp_path):
  """End to end: the flag is gone from the process that trains the demo (the recipe sets it)."""
  import subprocess
  import sys
  from helpers import REPO, load_recipe, subprocess_env
  assert load_recipe("demo").xla_cpu_ynnpack and not load_recipe("tokenizer_ss").xla_cpu_ynnpack
  env = subprocess_env()
  env.pop("XLA_FLAGS", None)
  code = ("import os, sys; from gigatok_jax import main; from absl import flags; "
          "main.parse_flags(sys.argv); from gigatok_jax import xla_cpu_flags; "
          "xla_cpu_flags.use_recipe_choice(main.FLAGS.config); print(repr(os.environ.get('XLA_FLAGS')))")
  for recipe, expect in (("configs/demo.py", "''"), ("configs/tokenizer_ss.py",
                                                     "'--xla_cpu_experimental_ynn_fusion_type='")):
    out = subprocess.run([sys.executable, "-c", code, f"--config={recipe}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if xla_cpu_flags._jaxlib_version().startswith("0.10."):
      assert out.stdout.strip().splitlines()[-1] == expect, (recipe, out.stdout)
