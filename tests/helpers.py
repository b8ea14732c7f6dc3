"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe(name: str, variant: str = ""):
  """configs/<name>.py:get_config(variant), the way config_flags loads it."""
  spec = importlib.util.spec_from_file_location(f"recipe_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def subprocess_env(**extra) -> dict:
  """Environment for CLI subprocesses: repo on the path, one CPU device, conftest's XLA settings."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(*args, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
  """Runs `python -m gigatok_jax.main ARGS` and returns the completed process (text output)."""
  return subprocess.run([sys.executable, "-m", "gigatok_jax.main", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                        **popen)
