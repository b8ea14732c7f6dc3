"""Ahead-of-time planning (`--mode=aot`): target parsing everywhere; compiles where libtpu exists.

The compiling tests carry the `tpu_aot` marker and run when libtpu is importable (the optional
`pip install libtpu` of the README); without it, the mode must fail with one line saying so.
"""

import importlib.util
import json
import time

import pytest

from gigatok_jax.modes import aot
from gigatok_jax.errors import UserError
from helpers import load_recipe, run_cli

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
tpu_aot = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install libtpu)")


def test_slice_names_resolve_to_topologies():
  assert aot.topology_name("v5e-256") == ("v5e", "v5e:16x16", 256)
  assert aot.topology_name("v6e-64") == ("v6e", "v6e:8x8", 64)
  assert aot.topology_name("v5p-64") == ("v5p", "v5p:2x4x4", 32)    # 64 TensorCores = 32 chips
  assert aot.topology_name("v4-32") == ("v4", "v4:2x2x4", 16)
  assert aot.topology_name("v5e:2x4") == ("v5e", "v5e:2x4", 8)
  for bad in ("v9-8", "v5e-3"):
    with pytest.raises(UserError, match="--aot_targets"):
      aot.topology_name(bad)


@pytest.mark.skipif(HAS_LIBTPU, reason="checks the error shown when libtpu is missing")
def test_without_libtpu_the_mode_says_what_to_install():
  proc = run_cli("--config=configs/gpt_b.py:tiny", "--mode=aot", "--aot_targets=v5e:2x2")
  assert proc.returncode == 2
  assert "libtpu" in proc.stderr.splitlines()[-1]


@tpu_aot
def test_gpt_plan_on_a_v5e_slice(tmp_path):
  config = load_recipe("gpt_b", "tiny")
  config.mesh.update(data=1, fsdp=-1)
  row = aot.plan(config, "v5e:2x2")
  assert row["devices"] == 4 and row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert row["fits"] and 0 < row["total_bytes"] < row["hbm_bytes"] == 16 * 2**30
  assert row["flops_per_step_per_device"] > 0 and row["step_time_s_at_50pct_mfu"] > 0
  # FSDP over 4 chips: each holds about a quarter of the fp32 parameters and Adam moments.
  state_bytes = 3 * 4 * row["params"]
  assert row["argument_bytes"] < 0.5 * state_bytes


@tpu_aot
def test_a_step_that_does_not_fit_is_a_row_saying_so(tmp_path, capsys):
  # 2M sequences of 16 tokens: logits alone are 64 GiB on one 16 GiB v5e chip. v5e-1 also checks
  # that a 1x1 slice resolves (libtpu's default host bounds of 2x2 chips do not divide it).
  config = load_recipe("gpt_b", "tiny")
  config.global_batch_size = 2**21
  (row,) = aot.plan_targets(config, ["v5e-1"], output=str(tmp_path / "plan.json"))
  assert row["devices"] == 1 and not row["fits"]
  assert "RESOURCE_EXHAUSTED" in row["compiler_message"]
  assert row["required_bytes"] > row["hbm_bytes"] == 16 * 2**30
  assert row["total_bytes"] is None and row["step_time_s_at_50pct_mfu"] is None
  assert row["flops_per_step_per_device"] > 0
  out = capsys.readouterr().out
  assert "v5e-1" in out and " NO " in out and "TPU compiler: RESOURCE_EXHAUSTED" in out
  assert json.loads((tmp_path / "plan.json").read_text())[0]["fits"] is False


def test_a_long_compile_prints_a_heartbeat(capsys):
  with aot._heartbeat("v5p-8", time.time(), every_s=0.05):  # pylint: disable=protected-access
    time.sleep(0.3)
  beats = [l for l in capsys.readouterr().out.splitlines() if "v5p-8: still compiling" in l]
  assert len(beats) >= 2
  time.sleep(0.2)                                            # the thread stopped with the block
  assert "still compiling" not in capsys.readouterr().out


def test_out_of_memory_messages_give_the_bytes_asked_for():
  required, g = aot._required_bytes, 2**30  # pylint: disable=protected-access
  assert required("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                  "temporaries (389.90G) exceeds available HBM (15.75G).") == int(389.90 * g)
  assert required("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. "
                  "Ran out of memory in memory space hbm. Used 15.76G of 15.75G hbm. Exceeded hbm "
                  "capacity by 9.92M.") == int(15.76 * g)
  assert required("RESOURCE_EXHAUSTED: no numbers") is None


@pytest.mark.parametrize("recipe", ["gpt_b", "demo"])
def test_aot_traces_the_trainers_own_jitted_step(recipe, monkeypatch):
  """One step signature: `--mode=aot` traces the very jitted function training runs (the task's
  `jitted_train_step`, in the steady phase), not a re-declaration of it."""
  import jax
  from gigatok_jax import parallel
  from gigatok_jax.train import gpt, tokenizer
  config = load_recipe(recipe, "tiny")
  config.mesh.data = 1
  task_cls = gpt.GPTTask if recipe == "gpt_b" else tokenizer.TokenizerTask
  handed_out = []
  original = task_cls.jitted_train_step

  def spy(self, phase=None):
    fn = original(self, phase) if phase is not None else original(self)
    handed_out.append((phase, fn))
    return fn
  monkeypatch.setattr(task_cls, "jitted_train_step", spy)
  traced, num_params = aot._traced(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  ((phase, fn),) = handed_out
  assert isinstance(fn, type(jax.jit(lambda x: x)))      # the jitted step itself
  if recipe == "demo":
    assert phase == tokenizer.Phase(gan=config.loss.disc_weight > 0, aux=False)
  assert num_params > 0 and traced.jaxpr is not None
