"""Matmul and convolution FLOPs of a traced program, loops counted by their trip counts.

XLA's `cost_analysis()` counts the body of a while loop once, so for a step whose layers run as a
`lax.scan` (`model.scan_layers`) it under-counts by about the depth. This walks the jaxpr instead:
every `dot_general` and `conv_general_dilated`, times the length of each enclosing scan, the
rematerialised forward passes included (they are in the jaxpr of the gradient). Elementwise work
is not counted: these are the FLOPs that MFU is quoted against.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = math.prod(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))
  return 2.0 * math.prod(lhs) * rhs_free


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
  # Each output element is a dot over (input features per group) x (kernel window).
  return 2.0 * math.prod(out) * math.prod(rhs) / rhs[out_feature_dim]


def _sub_jaxprs(value: Any):
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of a (closed) jaxpr: matmuls and convolutions, scans times their length."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    subs = [f for v in eqn.params.values() for f in (jaxpr_flops(j) for j in _sub_jaxprs(v))]
    if not subs:
      continue
    if name == "cond":                                # one branch runs: count the dearest
      total += max(subs)
    elif name == "while":
      raise ValueError("jaxpr_flops: a while loop has no static trip count; use lax.scan")
    else:
      total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
  return total


def step_flops(jitted, *args) -> float:
  """Global FLOPs of one call of `jitted` (a jax.jit object) on `args` (arrays or abstract)."""
  return jaxpr_flops(jitted.trace(*args).jaxpr)
