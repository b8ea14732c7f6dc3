"""Numerical parity of models/cnn.py and of the fused GroupNorm (models/group_norm.py) with
PyTorch references (checkpoint_layouts.md 1.3-1.4, docs/spec.md §2.1): residual
blocks, bottom-right-padded downsampling, DCR depth-to-space, adaptive group norm, the CNN
encoder and decoder, and GroupNorm(+swish) forward and gradients.

The torch reference modules, the weight copies and the comparison helpers are in torch_reference.py
(written from checkpoint_layouts.md and docs/spec.md; its docstring says how references are written
and compared). Each comparison states its tolerance, and the negative controls (a plausible wrong
variant of the reference) must differ from our output by far more than it.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gigatok_jax.models import cnn, layers  # noqa: E402
from torch_reference import (F32, TAdaptiveGroupNorm, TCNNDecoder, TCNNEncoder,  # noqa: E402
                             TDownsample, TResnetBlock, TUpsample, Z, _np, _set,
                             assert_close, assert_differs, copy_agn, copy_cnn_decoder,
                             copy_cnn_encoder, copy_conv, copy_resblock, keys, nhwc,
                             randomize_, t_depth_to_space)


@pytest.mark.parametrize("cin,cout", [(64, 64), (32, 64)])
def test_resnet_block_matches_torch(cin, cout):
  torch.manual_seed(3)
  ref = randomize_(TResnetBlock(cin, cout))
  ours = cnn.ResnetBlock(cin, cout, rngs=keys(3), **F32)
  copy_resblock(ours, ref)
  x = torch.randn(2, cin, 12, 10)
  with torch.no_grad():
    want = ref(x)
  assert_close(ours(jnp.asarray(nhwc(x))), nhwc(want), 1e-5, f"ResnetBlock {cin}->{cout}")  # 1e-5


def test_downsample_pads_bottom_right():
  torch.manual_seed(4)
  ref = TDownsample(64).eval()
  level = cnn.EncoderLevel(64, 64, 0, downsample=True, rngs=keys(4), **F32)
  copy_conv(level.downsample, ref.conv)
  for h, w in ((16, 16), (15, 13)):                         # even and odd sizes
    x = torch.randn(2, 64, h, w)
    with torch.no_grad():
      want = ref(x)
    got = level(jnp.asarray(nhwc(x)))
    assert_close(got, nhwc(want), 1e-5, f"stride-2 downsample {h}x{w}")
  with torch.no_grad():                                     # negative control: top-left padding
    wrong = ref.conv(F.pad(x, (1, 0, 1, 0)))
  assert_differs(got, nhwc(wrong), 1e-2, "padding (1,0,1,0)")


def test_depth_to_space_is_dcr():
  x = torch.randn(2, 4 * 8, 5, 6)
  want = t_depth_to_space(x)
  got = cnn.depth_to_space(jnp.asarray(nhwc(x)))
  assert_close(got, nhwc(want), 0.0, "depth_to_space (pure permutation: exact)")
  # Documented element formula, checked directly on one element pattern.
  c, b_, h_, w_ = 8, 1, 3, 4
  for i in (0, 1):
    for j in (0, 1):
      np.testing.assert_array_equal(np.asarray(got)[b_, 2 * h_ + i, 2 * w_ + j, :],
                                    _np(x)[b_, (2 * i + j) * c:(2 * i + j + 1) * c, h_, w_])
  assert_differs(got, nhwc(F.pixel_shuffle(x, 2)), 1e-1, "torch.pixel_shuffle (CRD order)")
  # And the conv + D2S module.
  torch.manual_seed(5)
  ref = TUpsample(16).eval()
  up = cnn.DepthToSpaceUpsample(16, rngs=keys(5), **F32)
  copy_conv(up.conv1, ref.conv1)
  x = torch.randn(2, 16, 6, 7)
  with torch.no_grad():
    want = ref(x)
  assert_close(up(jnp.asarray(nhwc(x))), nhwc(want), 1e-5, "DepthToSpaceUpsample")


def test_adaptive_group_norm_unbiased_std():
  torch.manual_seed(6)
  ref = randomize_(TAdaptiveGroupNorm(Z, 64))
  ours = cnn.AdaptiveGroupNorm(Z, 64, rngs=keys(6), **F32)
  copy_agn(ours, ref)
  x = torch.randn(2, 64, 8, 8) * 3 + 1
  cond = torch.randn(2, Z, 4, 4) * torch.rand(1, Z, 1, 1) * 4   # 16 positions: N/(N-1) = 1.07
  with torch.no_grad():
    want = ref(x, cond)
    ref.unbiased = False
    wrong = ref(x, cond)
  got = ours(jnp.asarray(nhwc(x)), jnp.asarray(nhwc(cond)))
  assert_close(got, nhwc(want), 1e-5, "AdaptiveGroupNorm")
  assert_differs(got, nhwc(wrong), 1e-3, "biased std")


def _cnn_cfg():
  return dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=Z)


def test_cnn_encoder_matches_torch():
  torch.manual_seed(7)
  c = _cnn_cfg()
  ref = randomize_(TCNNEncoder(c["ch"], c["ch_mult"], c["num_res_blocks"], Z))
  ours = cnn.CNNEncoder(rngs=keys(7), **c, **F32)
  copy_cnn_encoder(ours, ref)
  x = torch.rand(2, 3, 64, 64) * 2 - 1
  with torch.no_grad():
    want = ref(x)
  assert_close(ours(jnp.asarray(nhwc(x))), nhwc(want), 1e-4, "CNNEncoder")  # ~16 convs deep: 1e-4


def test_cnn_decoder_matches_torch():
  torch.manual_seed(8)
  c = _cnn_cfg()
  ref = randomize_(TCNNDecoder(c["ch"], c["ch_mult"], c["num_res_blocks"], Z))
  ours = cnn.CNNDecoder(rngs=keys(8), **c, **F32)
  copy_cnn_decoder(ours, ref)
  z = torch.randn(2, Z, 16, 16)
  with torch.no_grad():
    want = ref(z)
  got = ours(jnp.asarray(nhwc(z)))
  assert got.shape == (2, 64, 64, 3)
  assert_close(got, nhwc(want), 1e-4, "CNNDecoder")  # ~24 convs deep: 1e-4


@pytest.mark.parametrize("swish", [False, True])
def test_group_norm_forward_and_gradients(swish):
  """The fused GroupNorm(+swish) has a hand-written VJP (models/group_norm.py): its input, scale
  and bias gradients must match torch autograd through nn.GroupNorm (+ SiLU)."""
  torch.manual_seed(7)
  ref = randomize_(nn.GroupNorm(32, 64, eps=1e-6))
  ours = layers.GroupNorm(64, rngs=keys(7), **F32)
  _set(ours.scale, ref.weight)
  _set(ours.bias, ref.bias)
  x = (torch.randn(2, 64, 6, 5) * 3 + 1.5).requires_grad_(True)
  cot = torch.randn(2, 64, 6, 5)
  out = ref(x)
  if swish:
    out = F.silu(out)
  (out * cot).sum().backward()

  graphdef, params = nnx.split(ours)

  def loss(x_nhwc, params):
    return jnp.sum(nnx.merge(graphdef, params)(x_nhwc, swish=swish) * jnp.asarray(nhwc(cot)))

  x_j = jnp.asarray(nhwc(x))
  got_out = ours(x_j, swish=swish)
  dx, dparams = jax.grad(loss, (0, 1))(x_j, params)
  dscale, dbias = dparams["scale"][...], dparams["bias"][...]
  assert_close(got_out, nhwc(out), 1e-5, f"GroupNorm(swish={swish}) output")
  assert_close(dx, nhwc(x.grad), 1e-5, f"GroupNorm(swish={swish}) d input")
  assert_close(dscale, ref.weight.grad, 1e-4, f"GroupNorm(swish={swish}) d scale")
  assert_close(dbias, ref.bias.grad, 1e-4, f"GroupNorm(swish={swish}) d bias")
