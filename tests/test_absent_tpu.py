"""JAX_PLATFORMS=cpu where libtpu is installed without a TPU (gigatok_jax/absent_tpu.py)."""

import os
import subprocess
import sys

from gigatok_jax import absent_tpu
from helpers import REPO, subprocess_env


def test_sets_cpu_only_when_libtpu_would_start_for_nothing(tmp_path):
  env = {}
  assert absent_tpu.configure(env, libtpu_installed=True, gpu_plugin_installed=False,
                              tpu_present=False)
  assert env == {"JAX_PLATFORMS": "cpu"}
  for probes in ({"libtpu_installed": False}, {"gpu_plugin_installed": True},
                 {"tpu_present": True}):
    env = {}
    kw = {"libtpu_installed": True, "gpu_plugin_installed": False, "tpu_present": False, **probes}
    assert not absent_tpu.configure(env, **kw) and env == {}
  # The user's choice stands.
  for name, value in (("JAX_PLATFORMS", "tpu,cpu"), ("JAX_FORCE_TPU_INIT", "1"),
                      ("TPU_ACCELERATOR_TYPE", "v5e-8"), ("GIGATOK_KEEP_JAX_PLATFORMS", "1")):
    env = {name: value}
    assert not absent_tpu.configure(env, libtpu_installed=True, gpu_plugin_installed=False,
                                    tpu_present=False)
    assert env == {name: value}
  # The PCI probe reads vendor ids as JAX does.
  for i, vendor in enumerate(("0x8086", "0x1af4")):
    (tmp_path / f"0000:00:0{i}.0").mkdir()
    (tmp_path / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
  assert not absent_tpu._tpu_on_pci_bus(str(tmp_path))
  (tmp_path / "0000:00:05.0").mkdir()
  (tmp_path / "0000:00:05.0" / "vendor").write_text("0x1ae0\n")
  assert absent_tpu._tpu_on_pci_bus(str(tmp_path))


def test_a_run_on_this_machine_prints_no_libtpu_warnings():
  """Importing gigatok_jax first, then starting JAX, prints nothing from libtpu (where the test
  extra installed it; on other machines this checks that nothing else is printed either)."""
  env = subprocess_env()
  env.pop("JAX_PLATFORMS", None)
  code = ("import gigatok_jax, jax; print(jax.devices()[0].platform)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  if not absent_tpu._tpu_on_pci_bus() and not absent_tpu._gpu_plugin_installed():
    assert out.stdout.strip() == "cpu"
    assert "TPU" not in out.stderr, out.stderr
