"""Numerical parity of models/quantizer.py with a PyTorch reference (checkpoint_layouts.md 1.4,
docs/spec.md §2.5): the vector quantizer's forward, indices and losses, the rotation trick
(value and gradient), and gradients end to end.

The torch reference modules, the weight copies and the comparison helpers are in torch_reference.py
(written from checkpoint_layouts.md and docs/spec.md; its docstring says how references are written
and compared). Each comparison states its tolerance, and the negative controls (a plausible wrong
variant of the reference) must differ from our output by far more than it.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gigatok_jax.models import quantizer  # noqa: E402
from torch_reference import (CODEBOOK, CODE_DIM, TQuantizer, _np, _set, assert_close,  # noqa: E402
                             assert_differs, keys, t_entropy, t_rotate_to)


def _quantizer_pair(seed):
  torch.manual_seed(seed)
  ref = TQuantizer(CODEBOOK, CODE_DIM)
  ours = quantizer.VectorQuantizer(CODEBOOK, CODE_DIM, rngs=keys(seed))
  _set(ours.embedding, ref.embedding.weight)
  return ref, ours


def test_quantizer_forward_and_losses():
  ref, ours = _quantizer_pair(9)
  z = torch.randn(2, CODE_DIM, 1, 64) * 3                    # fake-2D token map, not normalised
  with torch.no_grad():
    out, idx, vq, commit, ent, d = ref(z)
  res = ours(jnp.asarray(_np(z)[:, :, 0].transpose(0, 2, 1)), with_entropy=True)
  srt = np.sort(_np(d), axis=1)
  assert (srt[:, 1] - srt[:, 0]).min() > 1e-4, "near-tie in the reference argmin: pick another seed"
  np.testing.assert_array_equal(np.asarray(res.indices).reshape(-1), _np(idx), "indices")
  e = F.normalize(ref.embedding.weight, dim=-1)[idx].view(2, 64, CODE_DIM)
  assert_close(res.quantized, e, 1e-5, "VQ forward value == normalised codeword")
  assert_close(res.quantized, _np(out)[:, :, 0].transpose(0, 2, 1), 1e-5, "VQ output vs torch")
  assert_close(res.vq_loss, vq, 1e-6, "vq loss")
  assert_close(res.commit_loss, commit, 1e-6, "commitment loss")
  assert_close(res.entropy_loss, ent, 1e-4, "entropy loss")  # logits are -d/0.01: 1e-4 abs
  assert abs(float(ent)) > 1e-2                              # not trivially zero
  assert_close(ours.lookup(res.indices), e, 1e-6, "lookup == normalised codeword")
  # Negative control for the entropy: p with temperature 1 instead of 0.01.
  assert_differs(res.entropy_loss, t_entropy(d, 1.0), 1e-2, "entropy temperature 1")


def test_rotate_to_value_and_gradient():
  torch.manual_seed(10)
  z = F.normalize(torch.randn(40, CODE_DIM), dim=-1)
  zq = F.normalize(torch.randn(40, CODE_DIM), dim=-1)
  g = torch.randn(40, CODE_DIM)
  zt = z.clone().requires_grad_(True)
  out = t_rotate_to(zt, zq)
  (out * g).sum().backward()

  def f(zj):
    return jnp.sum(quantizer.rotate_to(zj, jnp.asarray(_np(zq))) * jnp.asarray(_np(g)))
  zj = jnp.asarray(_np(z))
  got_out = quantizer.rotate_to(zj, jnp.asarray(_np(zq)))
  assert_close(got_out, zq, 1e-5, "rotate_to value == target")
  assert_close(got_out, out, 1e-5, "rotate_to value vs torch")
  grad = jax.grad(f)(zj)
  assert_close(grad, zt.grad, 1e-5, "rotate_to gradient")
  # Negative control: straight-through estimator gradient (identity) differs.
  assert_differs(grad, g, 1e-2, "straight-through gradient")


def test_quantizer_gradients_end_to_end():
  """Gradient of a random functional of the output + losses w.r.t. the pre-normalisation z and codebook."""
  ref, ours = _quantizer_pair(11)
  torch.manual_seed(11)
  z = torch.randn(2, CODE_DIM, 1, 32) * 2
  g = torch.randn(2, CODE_DIM, 1, 32)
  zt = z.clone().requires_grad_(True)
  out, _, vq, commit, ent, _ = ref(zt)
  ((out * g).sum() + vq + commit + 0.5 * ent).backward()

  z_j = jnp.asarray(_np(z)[:, :, 0].transpose(0, 2, 1))
  g_j = jnp.asarray(_np(g)[:, :, 0].transpose(0, 2, 1))
  graphdef, params = nnx.split(ours, nnx.Param)

  def loss(params, zz):
    res = nnx.merge(graphdef, params)(zz, with_entropy=True)
    return jnp.sum(res.quantized * g_j) + res.vq_loss + res.commit_loss + 0.5 * res.entropy_loss

  gp, gz = jax.grad(loss, argnums=(0, 1))(params, z_j)
  assert_close(gz, _np(zt.grad)[:, :, 0].transpose(0, 2, 1), 1e-5, "VQ grad w.r.t. pre-norm z")
  # The entropy term (logits -d/0.01) makes codebook gradients up to ~40: 1e-3 abs (~2e-5 relative).
  assert_close(gp["embedding"][...], ref.embedding.weight.grad, 1e-3, "VQ grad w.r.t. codebook")
  assert float(np.abs(_np(ref.embedding.weight.grad)).max()) > 1e-3
