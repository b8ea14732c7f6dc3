"""XLA:CPU flag defaults, applied when `gigatok_jax` is imported (before JAX starts a backend).

jaxlib 0.10.x routes convolutions on CPU through YNNPACK fusions by default. Measured with
`bench/tokenizer_step.py` on the project's 2-core CPU machines, the YNNPACK convolution weight
gradient is several times slower than XLA's own (Eigen) convolution: the S-S train step at batch 2
takes 42.4 s with YNNPACK and 23.3 s without it (MFU 0.30 -> 0.52). So we turn YNNPACK fusions
off, for jaxlib 0.10.x only (the version we measured; newer releases may have fixed it).

Small models would go the other way (the demo recipe ran 10% faster end to end with YNNPACK:
aux-loss steps 4.0 against 3.3 steps/s), but with YNNPACK a run resumed after kill -9 was not
bit-identical to the uninterrupted one (bench/faults.py, demo:tiny, 24 steps: arrays off by ~1e-3
after resuming from step 12; identical with the flag set, same kills), so it stays off everywhere.

The flag only concerns the CPU backend; GPU and TPU runs ignore it. A user who sets
`--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS keeps their own value, and
GIGATOK_KEEP_XLA_FLAGS=1 disables this module altogether. XLA reads XLA_FLAGS once, when the first
backend starts, so this has no effect if JAX computations ran before `gigatok_jax` was imported.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_AFFECTED_JAXLIB = ("0.10.",)


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def configure(environ=os.environ, jaxlib_version: str | None = None) -> bool:
  """Appends `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS where it helps.

  Returns True if XLA_FLAGS was changed.
  """
  if environ.get("GIGATOK_KEEP_XLA_FLAGS", "") not in ("", "0"):
    return False
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if not version.startswith(_AFFECTED_JAXLIB):
    return False
  current = environ.get("XLA_FLAGS", "")
  if YNN_FLAG in current:
    return False
  environ["XLA_FLAGS"] = f"{current} {YNN_FLAG}=".strip()
  return True
