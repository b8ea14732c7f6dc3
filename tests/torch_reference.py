"""PyTorch reference modules for the parity tests (a helper module: pytest collects no tests here).

Used by test_qformer.py, test_cnn.py, test_quantizer.py and test_tokenizer.py (numerical parity of
our Flax modules with small PyTorch references, checkpoint_layouts.md 1.3-1.5, docs/spec.md §2.1-2.5)
and by test_convert_gigatok.py (reference-named state dicts for the converter). It holds the torch
reference modules, the torch -> Flax weight copies, and the small comparison helpers.

The torch modules below are written from the documented reference semantics and key layout (NCHW
images, sequence-first (L, B, W) `nn.MultiheadAttention`, fake-2D (B, C, 1, N) token maps), with
random weights (norm affines and attention biases randomised too, so that a swapped or dropped
parameter shows). Their weights are copied into our Flax modules with the converter rules of
checkpoint_layouts.md section 0, both run on the same random input in float32, and the outputs are
compared by max abs error against a tolerance stated at each comparison.

Several tests also run a "negative control": a plausible wrong variant of the reference (torch
pixel_shuffle instead of DCR, biased std, symmetric padding, ...) must differ from our output by far
more than the tolerance (`assert_differs`), so each comparison can actually fail.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import jax.numpy as jnp  # noqa: E402

import gigatok_jax.parallel  # noqa: E402,F401  (turns off Flax eager sharding for model construction)
from gigatok_jax.models import layers  # noqa: E402

torch.set_num_threads(2)

F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)
W, HEADS = 64, 4          # transformer width / heads for the small Q-Formers
Z = 64                    # z_channels
GRID = 16                 # 16 x 16 grid, 256 tokens, as in the released models
CODE_DIM, CODEBOOK = 8, 512

# Documented multi-level pooling grids (rows x cols) for a 16 x 16 memory (layouts 1.4, docs/spec.md §2.4).
POOL_GRIDS_16 = [(1, 1), (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16)]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _np(t):
  return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def max_err(a, b) -> float:
  a, b = np.asarray(_np(a), np.float64), np.asarray(_np(b), np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def assert_close(ours, ref, tol, what):
  err = max_err(ours, ref)
  scale = float(np.max(np.abs(_np(ref))))
  print(f"[parity] {what}: max abs err {err:.2e} (tol {tol:.0e}, max |ref| {scale:.2f})")
  assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.0e} (max |ref| {scale:.3f})"


def assert_differs(ours, wrong, margin, what):
  """Negative control: a wrong variant of the reference must be far from our output."""
  err = max_err(ours, wrong)
  assert err > margin, f"negative control '{what}' is not detected (diff {err:.3e} <= {margin:.0e})"


def nhwc(t):   # torch NCHW -> numpy NHWC
  return _np(t).transpose(0, 2, 3, 1)


def nchw(a):   # numpy/jax NHWC -> numpy NCHW
  return np.asarray(a).transpose(0, 3, 1, 2)


def _set(var, value):
  value = np.asarray(_np(value), np.float32)
  assert tuple(var[...].shape) == value.shape, (tuple(var[...].shape), value.shape)
  var[...] = jnp.asarray(value)


@torch.no_grad()
def randomize_(module: nn.Module, std: float = 0.2):
  """Non-trivial norm affines and attention biases (torch defaults are 1 / 0)."""
  for m in module.modules():
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
      m.weight.copy_(1 + std * torch.randn_like(m.weight))
      m.bias.copy_(std * torch.randn_like(m.bias))
    elif isinstance(m, nn.MultiheadAttention):
      m.in_proj_bias.copy_(std * torch.randn_like(m.in_proj_bias))
      m.out_proj.bias.copy_(std * torch.randn_like(m.out_proj.bias))
  return module.eval()


def keys(seed=0):
  return layers.KeyGen(seed)


# ------------------------------------------------------------------------------------------------
# torch reference modules (written from checkpoint_layouts.md 1.3 / 1.4 and docs/spec.md §2.1-2.5)
# ------------------------------------------------------------------------------------------------
class TQFormerLayer(nn.Module):
  """Pre-norm DETR decoder layer, sequence-first; memory never normalised; exact GELU."""

  def __init__(self, w, heads):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(w, heads)
    self.multihead_attn = nn.MultiheadAttention(w, heads)
    self.linear1 = nn.Linear(w, 4 * w)
    self.linear2 = nn.Linear(4 * w, w)
    self.norm1, self.norm2, self.norm3 = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)

  def forward(self, tgt, memory, pos, query_pos):
    # tgt (L, B, W), memory (S, B, W), pos (S, 1, W) memory-key pos, query_pos (L, 1, W)
    h = self.norm1(tgt)
    tgt = tgt + self.self_attn(h + query_pos, h + query_pos, h, need_weights=False)[0]
    h = self.norm2(tgt)
    tgt = tgt + self.multihead_attn(h + query_pos, memory + pos, memory, need_weights=False)[0]
    h = self.norm3(tgt)
    return tgt + self.linear2(F.gelu(self.linear1(h)))


class TQFormerEncoder(nn.Module):
  def __init__(self, grid, z, w, depth, heads):
    super().__init__()
    n = grid * grid
    self.grid = grid
    self.positional_embedding = nn.Parameter(w ** -0.5 * torch.randn(n, 1, w))               # 2D memory
    self.latent_token_positional_embedding = nn.Parameter(w ** -0.5 * torch.randn(n, 1, w))  # 1D queries
    self.ln_pre = nn.LayerNorm(z)
    self.encoder_embed = nn.Linear(z, w)
    self.global_proj = nn.Linear(w, w)
    self.transformer = nn.ModuleList([TQFormerLayer(w, heads) for _ in range(depth)])
    self.ln_post = nn.LayerNorm(w)
    self.conv_out = nn.Conv2d(w, z, 1)

  def forward(self, x):  # (B, z, g, g) -> fake-2D (B, z, 1, g*g)
    b, _, g, _ = x.shape
    assert g == 16, "the documented pooling grids are for a 16 x 16 memory"
    memory = self.encoder_embed(self.ln_pre(x.flatten(2).permute(2, 0, 1)))  # (g*g, B, W), row-major
    grid_map = memory.permute(1, 2, 0).reshape(b, -1, g, g)
    pooled = [F.adaptive_avg_pool2d(grid_map, rc).flatten(2) for rc in POOL_GRIDS_16]
    t = self.global_proj(torch.cat(pooled, dim=2).permute(2, 0, 1))          # (256, B, W)
    for layer in self.transformer:
      t = layer(t, memory, pos=self.positional_embedding,
                query_pos=self.latent_token_positional_embedding)
    t = self.ln_post(t)
    return self.conv_out(t.permute(1, 2, 0).unsqueeze(2))                     # (B, W, 1, L) -> (B, z, 1, L)


class TQFormerDecoder(nn.Module):
  def __init__(self, grid, z, w, depth, heads, distill_depth, distill_dim):
    super().__init__()
    self.grid, self.distill_depth = grid, distill_depth
    n = grid * grid
    self.positional_embedding = nn.Parameter(w ** -0.5 * torch.randn(n, 1, w))               # 2D queries
    self.latent_token_positional_embedding = nn.Parameter(w ** -0.5 * torch.randn(n, 1, w))  # 1D memory
    self.ln_pre = nn.LayerNorm(z)
    self.decoder_embed = nn.Linear(z, w)
    self.transformer = nn.ModuleList([TQFormerLayer(w, heads) for _ in range(depth)])
    self.ln_post = nn.LayerNorm(w)
    self.conv_out = nn.Conv2d(w, z, 3, padding=1)
    self.distill_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w), nn.SiLU(),
                                     nn.Linear(4 * w, distill_dim))

  def forward(self, x):  # fake-2D (B, z, 1, N) -> ((B, z, g, g), (B, g*g, distill_dim))
    b = x.shape[0]
    memory = self.decoder_embed(self.ln_pre(x.flatten(2).permute(2, 0, 1)))  # (N, B, W)
    t = memory[:1].repeat(self.grid * self.grid, 1, 1)                        # first token repeated
    distill = None
    for i, layer in enumerate(self.transformer):
      t = layer(t, memory, pos=self.latent_token_positional_embedding,
                query_pos=self.positional_embedding)
      if i + 1 == self.distill_depth:
        distill = self.distill_mlp(t.permute(1, 0, 2))
    t = self.ln_post(t).permute(1, 2, 0).reshape(b, -1, self.grid, self.grid)
    return self.conv_out(t), distill


def t_gn(c, affine=True):
  return nn.GroupNorm(32, c, eps=1e-6, affine=affine)


class TResnetBlock(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.norm1, self.conv1 = t_gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
    self.norm2, self.conv2 = t_gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
    self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class TDownsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))  # one zero column right, one zero row bottom


def t_depth_to_space(x):
  """DCR: out[c, 2h+i, 2w+j] = in[(2i+j)*C + c, h, w] (layouts 1.4), not pixel_shuffle."""
  b, c4, h, w = x.shape
  c = c4 // 4
  return x.view(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, 2 * h, 2 * w)


class TUpsample(nn.Module):
  def __init__(self, c, d2s=t_depth_to_space):
    super().__init__()
    self.conv1 = nn.Conv2d(c, 4 * c, 3, padding=1)
    self.d2s = d2s

  def forward(self, x):
    return self.d2s(self.conv1(x))


class TAdaptiveGroupNorm(nn.Module):
  def __init__(self, z, c, unbiased=True):
    super().__init__()
    self.gn = t_gn(c, affine=False)
    self.gamma, self.beta = nn.Linear(z, c), nn.Linear(z, c)
    self.unbiased = unbiased

  def forward(self, x, cond):
    flat = cond.flatten(2)                                          # (B, Z, h*w)
    std = torch.sqrt(flat.var(-1, unbiased=self.unbiased) + 1e-6)
    mean = flat.mean(-1)
    return self.gn(x) * self.gamma(std)[..., None, None] + self.beta(mean)[..., None, None]


class TLevel(nn.Module):
  def __init__(self, cin, cout, n_blocks, resample):
    super().__init__()
    self.res = nn.ModuleList([TResnetBlock(cin if j == 0 else cout, cout) for j in range(n_blocks)])
    if resample is not None:
      self.add_module(resample[0], resample[1](cout))
    self.resample = resample[0] if resample is not None else None

  def forward(self, x):
    for block in self.res:
      x = block(x)
    return getattr(self, self.resample)(x) if self.resample else x


class TCNNEncoder(nn.Module):
  def __init__(self, ch, ch_mult, n_res, z):
    super().__init__()
    self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
    levels, cin = [], ch
    for i, m in enumerate(ch_mult):
      levels.append(TLevel(cin, ch * m, n_res,
                           ("downsample", TDownsample) if i < len(ch_mult) - 1 else None))
      cin = ch * m
    self.conv_blocks = nn.ModuleList(levels)
    self.mid = nn.ModuleList([TResnetBlock(cin, cin) for _ in range(2)])
    self.norm_out, self.conv_out = t_gn(cin), nn.Conv2d(cin, z, 3, padding=1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.conv_blocks:
      h = level(h)
    for block in self.mid:
      h = block(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class TCNNDecoder(nn.Module):
  def __init__(self, ch, ch_mult, n_res, z):
    super().__init__()
    cin = ch * ch_mult[-1]
    self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
    self.mid = nn.ModuleList([TResnetBlock(cin, cin) for _ in range(2)])
    adaptive, levels = [], []
    for i, m in enumerate(reversed(ch_mult)):
      adaptive.append(TAdaptiveGroupNorm(z, cin))
      levels.append(TLevel(cin, ch * m, n_res + 1,
                           ("upsample", TUpsample) if i < len(ch_mult) - 1 else None))
      cin = ch * m
    self.adaptive, self.conv_blocks = nn.ModuleList(adaptive), nn.ModuleList(levels)
    self.norm_out, self.conv_out = t_gn(cin), nn.Conv2d(cin, 3, 3, padding=1)

  def forward(self, z):
    h = self.conv_in(z)
    for block in self.mid:
      h = block(h)
    for agn, level in zip(self.adaptive, self.conv_blocks):
      h = level(agn(h, z))
    return self.conv_out(F.silu(self.norm_out(h)))


def t_rotate_to(z, z_q):
  """Rotation trick as in the reference (u, q, w and the norm ratio detached)."""
  nz, nq = z.norm(dim=-1, keepdim=True), z_q.norm(dim=-1, keepdim=True)
  u, q = (z / nz).detach(), (z_q / nq).detach()
  w = F.normalize(u + q, dim=-1).detach()
  out = z - 2 * (z * w).sum(-1, keepdim=True) * w + 2 * (z * u).sum(-1, keepdim=True) * q
  return out * (nq / nz).detach()


def t_entropy(d, temperature=0.01):
  logits = -d / temperature
  p, logp = F.softmax(logits, -1), F.log_softmax(logits, -1)
  h_sample = -(p * logp).sum(-1).mean()
  pbar = p.mean(0)
  h_avg = -(pbar * torch.log(pbar + 1e-5)).sum()
  return h_sample - h_avg


class TQuantizer(nn.Module):
  def __init__(self, k, d, beta=0.25):
    super().__init__()
    self.embedding = nn.Embedding(k, d)
    self.embedding.weight.data.uniform_(-1.0 / k, 1.0 / k)
    self.beta = beta

  def forward(self, z):  # (B, D, h, w) -> (z_q (B, D, h, w), idx (B*h*w,), vq, commit, entropy, d)
    z = z.permute(0, 2, 3, 1)
    z = F.normalize(z, p=2, dim=-1)
    zf = z.reshape(-1, z.shape[-1])
    e = F.normalize(self.embedding.weight, p=2, dim=-1)
    d = (zf ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * zf @ e.t()
    idx = torch.argmin(d, dim=1)
    z_q = e[idx].view(z.shape)
    vq = torch.mean((z_q - z.detach()) ** 2)
    commit = self.beta * torch.mean((z_q.detach() - z) ** 2)
    ent = t_entropy(d)
    out = t_rotate_to(zf, z_q.reshape(zf.shape)).view(z.shape)
    return out.permute(0, 3, 1, 2), idx, vq, commit, ent, d


# ------------------------------------------------------------------------------------------------
# weight copies torch -> ours (checkpoint_layouts.md section 0)
# ------------------------------------------------------------------------------------------------
def copy_linear(dst, src):
  _set(dst.kernel, _np(src.weight).T)
  _set(dst.bias, src.bias)


def copy_conv(dst, src):
  _set(dst.kernel, _np(src.weight).transpose(2, 3, 1, 0))
  _set(dst.bias, src.bias)


def copy_conv1x1_to_dense(dst, src):
  _set(dst.kernel, _np(src.weight)[:, :, 0, 0].T)
  _set(dst.bias, src.bias)


def copy_norm(dst, src):
  _set(dst.scale, src.weight)
  _set(dst.bias, src.bias)


def copy_mha(dst, src):
  w, h = src.embed_dim, src.num_heads
  d = w // h
  wq, wk, wv = _np(src.in_proj_weight).reshape(3, w, w)    # rows stacked q, k, v
  bq, bk, bv = _np(src.in_proj_bias).reshape(3, w)
  for name, wt, b in (("query", wq, bq), ("key", wk, bk), ("value", wv, bv)):
    _set(getattr(dst, name), wt.T.reshape(w, h, d))
    _set(getattr(dst, name + "_bias"), b.reshape(h, d))
  _set(dst.out, _np(src.out_proj.weight).T.reshape(h, d, w))
  _set(dst.out_bias, src.out_proj.bias)


def copy_qformer_layer(dst, src):
  copy_norm(dst.norm1, src.norm1)
  copy_norm(dst.norm2, src.norm2)
  copy_norm(dst.norm3, src.norm3)
  copy_mha(dst.self_attn, src.self_attn)
  copy_mha(dst.multihead_attn, src.multihead_attn)
  copy_linear(dst.mlp.fc1, src.linear1)
  copy_linear(dst.mlp.fc2, src.linear2)


def copy_qformer_encoder(dst, src):
  _set(dst.positional_embedding, _np(src.positional_embedding)[:, 0])
  _set(dst.latent_token_positional_embedding, _np(src.latent_token_positional_embedding)[:, 0])
  copy_norm(dst.ln_pre, src.ln_pre)
  copy_linear(dst.encoder_embed, src.encoder_embed)
  copy_linear(dst.global_proj, src.global_proj)
  assert len(dst.stack.transformer) == len(src.transformer)
  for a, b in zip(dst.stack.transformer, src.transformer):
    copy_qformer_layer(a, b)
  copy_norm(dst.ln_post, src.ln_post)
  copy_conv1x1_to_dense(dst.conv_out, src.conv_out)


def copy_qformer_decoder(dst, src):
  _set(dst.positional_embedding, _np(src.positional_embedding)[:, 0])
  _set(dst.latent_token_positional_embedding, _np(src.latent_token_positional_embedding)[:, 0])
  copy_norm(dst.ln_pre, src.ln_pre)
  copy_linear(dst.decoder_embed, src.decoder_embed)
  assert len(dst.stack.transformer) == len(src.transformer)
  for a, b in zip(dst.stack.transformer, src.transformer):
    copy_qformer_layer(a, b)
  copy_norm(dst.ln_post, src.ln_post)
  copy_conv(dst.conv_out, src.conv_out)
  copy_linear(dst.distill_mlp.fc1, src.distill_mlp[0])
  copy_linear(dst.distill_mlp.fc2, src.distill_mlp[2])
  copy_linear(dst.distill_mlp.fc3, src.distill_mlp[4])


def copy_resblock(dst, src):
  copy_norm(dst.norm1, src.norm1)
  copy_conv(dst.conv1, src.conv1)
  copy_norm(dst.norm2, src.norm2)
  copy_conv(dst.conv2, src.conv2)
  assert (dst.nin_shortcut is None) == (src.nin_shortcut is None)
  if src.nin_shortcut is not None:
    copy_conv(dst.nin_shortcut, src.nin_shortcut)


def copy_agn(dst, src):
  copy_linear(dst.gamma, src.gamma)
  copy_linear(dst.beta, src.beta)


def copy_level(dst, src, resample):
  assert len(dst.res) == len(src.res)
  for a, b in zip(dst.res, src.res):
    copy_resblock(a, b)
  ours = getattr(dst, resample)
  assert (ours is None) == (src.resample is None)
  if ours is not None:
    theirs = getattr(src, resample)
    copy_conv(ours if resample == "downsample" else ours.conv1,
              theirs.conv if resample == "downsample" else theirs.conv1)


def copy_cnn_encoder(dst, src):
  copy_conv(dst.conv_in, src.conv_in)
  for a, b in zip(dst.conv_blocks, src.conv_blocks, strict=True):
    copy_level(a, b, "downsample")
  for a, b in zip(dst.mid, src.mid, strict=True):
    copy_resblock(a, b)
  copy_norm(dst.norm_out, src.norm_out)
  copy_conv(dst.conv_out, src.conv_out)


def copy_cnn_decoder(dst, src):
  copy_conv(dst.conv_in, src.conv_in)
  for a, b in zip(dst.mid, src.mid, strict=True):
    copy_resblock(a, b)
  for a, b in zip(dst.adaptive, src.adaptive, strict=True):
    copy_agn(a, b)
  for a, b in zip(dst.conv_blocks, src.conv_blocks, strict=True):
    copy_level(a, b, "upsample")
  copy_norm(dst.norm_out, src.norm_out)
  copy_conv(dst.conv_out, src.conv_out)


# ------------------------------------------------------------------------------------------------
# whole-tokenizer references: 1D `TTokenizer` (layouts 1.3), 2D `TTokenizer2D` (layouts 1.5)
# ------------------------------------------------------------------------------------------------
class TTokenizer(nn.Module):
  def __init__(self, m):
    super().__init__()
    g = 16
    self.encoder = TCNNEncoder(m.cnn_ch, m.cnn_ch_mult, m.cnn_num_res_blocks, m.z_channels)
    self.decoder = TCNNDecoder(m.cnn_ch, m.cnn_ch_mult, m.cnn_num_res_blocks, m.z_channels)
    self.s2to1encoder = TQFormerEncoder(g, m.z_channels, m.enc_width, m.enc_layers, m.enc_heads)
    self.s1to2decoder = TQFormerDecoder(g, m.z_channels, m.dec_width, m.dec_layers, m.dec_heads,
                                        m.distill_depth, m.distill_dim)
    self.quant_conv = nn.Conv2d(m.z_channels, m.code_dim, 1)
    self.quantize = TQuantizer(m.codebook_size, m.code_dim)
    self.post_quant_conv = nn.Conv2d(m.code_dim, m.z_channels, 1)

  def forward(self, x):
    h = self.s2to1encoder(self.encoder(x))                    # (B, z, 1, 256)
    zq, idx, vq, commit, ent, d = self.quantize(self.quant_conv(h))
    grid_map, distill = self.s1to2decoder(self.post_quant_conv(zq))
    return self.decoder(grid_map), idx, vq, commit, ent, distill, d


class TTransformerLayer(nn.Module):
  """The 2D tokenizer's plain layer (`TransformerLayer`, layouts 1.5): 12 keys, no cross-attention."""

  def __init__(self, w, heads):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(w, heads)
    self.linear1 = nn.Linear(w, 4 * w)
    self.linear2 = nn.Linear(4 * w, w)
    self.norm1, self.norm2 = nn.LayerNorm(w), nn.LayerNorm(w)


class TViT2D(nn.Module):
  """`s2dencoder` / `s2ddecoder` of `VQVitModel2DPlus` (layouts 1.5), state-dict layout only.

  The input layer is `encoder_embed` / `decoder_embed` as in the 1D Q-Formers (layouts 1.3); one
  `positional_embedding` (g*g, 1, W); layers `TQFormerLayer` (layer_type 'decoder', 18 keys) or
  `TTransformerLayer` ('plain', 12 keys); the decoder has a 3x3 `conv_out` and `distill_mlp`.
  """

  def __init__(self, side, g, z, w, n_layers, heads, layer_type, distill_dim=0):
    super().__init__()
    self.positional_embedding = nn.Parameter(w ** -0.5 * torch.randn(g * g, 1, w))
    self.ln_pre = nn.LayerNorm(z)
    setattr(self, f"{side}_embed", nn.Linear(z, w))
    layer = TQFormerLayer if layer_type == "decoder" else TTransformerLayer
    self.transformer = nn.ModuleList([layer(w, heads) for _ in range(n_layers)])
    self.ln_post = nn.LayerNorm(w)
    self.conv_out = nn.Conv2d(w, z, 1 if side == "encoder" else 3,
                              padding=0 if side == "encoder" else 1)
    if distill_dim:
      self.distill_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w),
                                       nn.SiLU(), nn.Linear(4 * w, distill_dim))


class TTokenizer2D(nn.Module):
  """`VQVitModel2DPlus` (layouts 1.5) as a state-dict layout: CNN, quantizer, 1x1 convs as in 1.3."""

  def __init__(self, m, grid):
    super().__init__()
    layer_type = m.vit_layer_type
    self.encoder = TCNNEncoder(m.cnn_ch, m.cnn_ch_mult, m.cnn_num_res_blocks, m.z_channels)
    self.decoder = TCNNDecoder(m.cnn_ch, m.cnn_ch_mult, m.cnn_num_res_blocks, m.z_channels)
    self.s2dencoder = TViT2D("encoder", grid, m.z_channels, m.enc_width, m.enc_layers, m.enc_heads,
                             layer_type)
    self.s2ddecoder = TViT2D("decoder", grid, m.z_channels, m.dec_width, m.dec_layers, m.dec_heads,
                             layer_type, m.distill_dim)
    self.quant_conv = nn.Conv2d(m.z_channels, m.code_dim, 1)
    self.quantize = TQuantizer(m.codebook_size, m.code_dim)
    self.post_quant_conv = nn.Conv2d(m.code_dim, m.z_channels, 1)


SEED_IMAGES = 105
