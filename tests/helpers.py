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


def forbid_training_objects(monkeypatch):
  """Any optimizer, discriminator, teacher or full-state restore built from here on fails."""
  import optax
  from gigatok_jax import checkpointing
  from gigatok_jax.models import discriminator
  from gigatok_jax.train import optim, teachers

  def refuse(what):
    def fail(*args, **kwargs):
      raise AssertionError(f"inference built {what}")
    return fail
  monkeypatch.setattr(optax, "adamw", refuse("an AdamW optimizer"))
  monkeypatch.setattr(optim, "adamw", refuse("the tokenizer optimizer"))
  monkeypatch.setattr(optim, "gpt_adamw", refuse("the GPT optimizer"))
  monkeypatch.setattr(discriminator.PatchGANDiscriminator, "__init__", refuse("a discriminator"))
  monkeypatch.setattr(teachers.FrozenTeachers, "__init__", refuse("the frozen teachers"))
  monkeypatch.setattr(checkpointing.Checkpointer, "restore", refuse("a full training-state restore"))


def saved_run(tmp_path, config, task_cls):
  """A run directory with one checkpoint (step 0) of a freshly initialised training state."""
  import jax
  from gigatok_jax import parallel, runs
  workdir = str(tmp_path / "run")
  task = task_cls(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  state = task.init_state()
  runs.write_config(config, workdir)
  ckpt = runs.open_checkpoints(workdir, config)
  ckpt.save(0, state, force=True)
  ckpt.close()
  return workdir, jax.device_get(state)
