"""Numerical parity of models/qformer.py with PyTorch references (checkpoint_layouts.md 1.3-1.4,
docs/spec.md §2.1 and §2.4): the DETR-style layer, the 1D encoder and the 1D decoder.

The torch reference modules, the weight copies and the comparison helpers are in torch_reference.py
(written from checkpoint_layouts.md and docs/spec.md; its docstring says how references are written
and compared). Each comparison states its tolerance, and the negative controls (a plausible wrong
variant of the reference) must differ from our output by far more than it.
"""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from gigatok_jax.models import qformer  # noqa: E402
from torch_reference import (F32, GRID, HEADS, POOL_GRIDS_16, TQFormerDecoder,  # noqa: E402
                             TQFormerEncoder, TQFormerLayer, W, Z, _np, assert_close,
                             assert_differs, copy_qformer_decoder, copy_qformer_encoder,
                             copy_qformer_layer, keys, nhwc, randomize_)


def test_qformer_layer_matches_torch():
  torch.manual_seed(0)
  ref = randomize_(TQFormerLayer(W, HEADS))
  ours = qformer.QFormerLayer(W, HEADS, 4.0, rngs=keys(), **F32)
  copy_qformer_layer(ours, ref)
  lq, lm, b = 20, 33, 2        # different query / memory lengths catch q-vs-kv mix-ups
  t, m = torch.randn(lq, b, W), torch.randn(lm, b, W)
  qp, mp = 0.5 * torch.randn(lq, 1, W), 0.5 * torch.randn(lm, 1, W)
  with torch.no_grad():
    want = ref(t, m, pos=mp, query_pos=qp).permute(1, 0, 2)
  got = ours(jnp.asarray(_np(t.permute(1, 0, 2))), jnp.asarray(_np(qp[:, 0])),
             jnp.asarray(_np(m.permute(1, 0, 2))), jnp.asarray(_np(mp[:, 0])))
  assert_close(got, want, 2e-5, "QFormerLayer")   # one layer, |ref| ~ 5: 2e-5 abs
  # Negative control: positional embedding also added to the self-attention values.
  with torch.no_grad():
    h = ref.norm1(t)
    wrong = t + ref.self_attn(h + qp, h + qp, h + qp, need_weights=False)[0]
    h = ref.norm2(wrong)
    wrong = wrong + ref.multihead_attn(h + qp, m + mp, m, need_weights=False)[0]
    wrong = wrong + ref.linear2(F.gelu(ref.linear1(ref.norm3(wrong))))
  assert_differs(got, wrong.permute(1, 0, 2), 1e-2, "pos-emb on values")


def test_qformer_encoder_matches_torch():
  torch.manual_seed(1)
  ref = randomize_(TQFormerEncoder(GRID, Z, W, depth=2, heads=HEADS))
  ours = qformer.QFormerEncoder(grid=GRID, z_channels=Z, width=W, layers=2, heads=HEADS,
                                mlp_ratio=4.0, rngs=keys(1), **F32)
  copy_qformer_encoder(ours, ref)
  x = torch.randn(2, Z, GRID, GRID)
  with torch.no_grad():
    want = ref(x)                                           # (B, z, 1, 256)
  got = ours(jnp.asarray(nhwc(x)))                          # (B, 256, z)
  assert_close(got, _np(want)[:, :, 0].transpose(0, 2, 1), 5e-5, "QFormerEncoder")  # 2 layers: 5e-5
  # Negative control: pooling grids with the row count growing first (1x1,1x1,2x1,2x2,4x2,...).
  wrong_grids = [(c, r) for r, c in POOL_GRIDS_16]
  with torch.no_grad():
    memory = ref.encoder_embed(ref.ln_pre(x.flatten(2).permute(2, 0, 1)))
    gm = memory.permute(1, 2, 0).reshape(2, -1, GRID, GRID)
    tq = ref.global_proj(torch.cat([F.adaptive_avg_pool2d(gm, rc).flatten(2) for rc in wrong_grids],
                                   2).permute(2, 0, 1))
    for layer in ref.transformer:
      tq = layer(tq, memory, ref.positional_embedding, ref.latent_token_positional_embedding)
    wrong = ref.conv_out(ref.ln_post(tq).permute(1, 2, 0).unsqueeze(2))
  assert_differs(got, _np(wrong)[:, :, 0].transpose(0, 2, 1), 1e-3, "rows-first pooling order")


def test_qformer_decoder_matches_torch():
  torch.manual_seed(2)
  depth, distill_depth, distill_dim = 4, 3, 32   # 4 layers so the layer-3 tap is not the last layer
  ref = randomize_(TQFormerDecoder(GRID, Z, W, depth, HEADS, distill_depth, distill_dim))
  ours = qformer.QFormerDecoder(grid=GRID, num_tokens=GRID * GRID, z_channels=Z, width=W, layers=depth,
                                heads=HEADS, mlp_ratio=4.0, distill_depth=distill_depth,
                                distill_dim=distill_dim, rngs=keys(2), **F32)
  copy_qformer_decoder(ours, ref)
  x = torch.randn(2, Z, 1, GRID * GRID)                     # fake-2D token map
  with torch.no_grad():
    want, want_distill = ref(x)
  got, got_distill = ours(jnp.asarray(_np(x)[:, :, 0].transpose(0, 2, 1)), with_distill=True)
  assert_close(got, nhwc(want), 1e-4, "QFormerDecoder map")              # 4 layers + 3x3 conv: 1e-4
  assert_close(got_distill, want_distill, 1e-4, "QFormerDecoder distill (layer 3)")
  _, no_distill = ours(jnp.asarray(_np(x)[:, :, 0].transpose(0, 2, 1)))
  assert no_distill is None
