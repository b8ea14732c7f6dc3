"""flops.py: matmul/conv FLOPs from the jaxpr, scans counted by their length (XLA's are not)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from gigatok_jax.flops import jaxpr_flops, step_flops
from gigatok_jax.models import qformer


def test_dot_and_conv_counts():
  x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
  assert step_flops(jax.jit(jnp.dot), x, w) == 2 * 8 * 32 * 16
  im, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert step_flops(jax.jit(conv), im, k) == 2 * (2 * 8 * 8 * 6) * (3 * 3 * 4)
  ws = jnp.ones((5, 32, 32))
  scan = lambda ws, x: jax.lax.scan(lambda h, w: (h @ w, None), x, ws)[0]
  assert step_flops(jax.jit(scan), ws, x) == 5 * 2 * 8 * 32 * 32
  cond = lambda p, x, w: jax.lax.cond(p, lambda: x @ w, lambda: x[:, :16] * 2.0)
  assert step_flops(jax.jit(cond), True, x, w) == 2 * 8 * 32 * 16
  loop = lambda x: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ c[0], c[1] + 1), (x, 0))
  with pytest.raises(ValueError, match="while loop"):
    step_flops(jax.jit(loop), jnp.ones((4, 4)))


def test_scanned_layers_count_like_unrolled_and_like_xla():
  """The gradient step of a 4-layer decoder: the same count scanned or not, and XLA's count of
  the unrolled program (which includes elementwise work) within 15%."""
  kw = dict(grid=4, num_tokens=16, z_channels=16, width=256, layers=4, heads=4, mlp_ratio=4.0,
            distill_depth=0, distill_dim=8, remat="full")
  x = jnp.ones((2, 16, 16))
  counts = {}
  for scan in (False, True):
    graph, params = nnx.split(qformer.QFormerDecoder(scan_layers=scan, rngs=nnx.Rngs(0), **kw),
                              nnx.Param)
    step = jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graph, p)(x)[0] ** 2)))
    counts[scan] = step_flops(step, params)
    if not scan:
      xla = step.lower(params).compile().cost_analysis()["flops"]
  assert counts[True] == pytest.approx(counts[False], rel=0.02)
  assert counts[False] == pytest.approx(xla, rel=0.15)
  assert jaxpr_flops(jax.make_jaxpr(lambda a: a + 1)(x)) == 0
