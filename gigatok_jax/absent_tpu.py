"""Skips JAX's TPU backend where libtpu is installed but the machine has no TPU chip.

JAX tries every installed backend when it first starts one. With the `libtpu` package installed
(our test extra installs it for `--mode=aot`'s TPU topologies) on a machine without a TPU, libtpu
still initialises and prints about ten lines of TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES
warnings to stderr before JAX falls back to the CPU: noise above the first log line of every run.
Where we can tell that JAX would end on the CPU anyway, we set JAX_PLATFORMS=cpu before any backend
starts. `--mode=aot` is unaffected: it loads libtpu's compiler directly, not as a backend.

We leave JAX alone when the user chose (JAX_PLATFORMS, JAX_FORCE_TPU_INIT, any TPU_* topology
variable), when a GPU plugin is installed (JAX should find the GPU), or when a Google TPU device is
on the PCI bus (vendor 0x1ae0, what JAX itself looks for). GIGATOK_KEEP_JAX_PLATFORMS=1 opts out.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
_GPU_PLUGIN_PREFIXES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")
_USER_CHOICE = ("JAX_PLATFORMS", "JAX_PLATFORM_NAME", "JAX_FORCE_TPU_INIT", "TPU_ACCELERATOR_TYPE",
                "TPU_WORKER_HOSTNAMES", "GIGATOK_KEEP_JAX_PLATFORMS")


def _libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def _gpu_plugin_installed() -> bool:
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_GPU_PLUGIN_PREFIXES):
      return True
  return False


def _tpu_on_pci_bus(root: str = "/sys/bus/pci/devices") -> bool:
  for vendor_file in glob.glob(os.path.join(root, "*", "vendor")):
    try:
      with open(vendor_file, encoding="ascii") as f:
        if f.read().strip().lower() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def configure(environ=os.environ, *, libtpu_installed=None, gpu_plugin_installed=None,
              tpu_present=None) -> bool:
  """Sets JAX_PLATFORMS=cpu when JAX would start libtpu for nothing; True if it did.

  The keyword arguments replace the machine probes (tests)."""
  if any(environ.get(name) for name in _USER_CHOICE):
    return False
  if not (_libtpu_installed() if libtpu_installed is None else libtpu_installed):
    return False
  if _gpu_plugin_installed() if gpu_plugin_installed is None else gpu_plugin_installed:
    return False
  if _tpu_on_pci_bus() if tpu_present is None else tpu_present:
    return False
  environ["JAX_PLATFORMS"] = "cpu"
  return True
