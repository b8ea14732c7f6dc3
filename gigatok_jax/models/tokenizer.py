"""The assembled GigaTok tokenizer: CNN encoder -> transformer encoder -> VQ -> transformer decoder
-> CNN decoder, with the semantic branch at decoder layer k (docs/spec.md §2.1).

Submodule names follow the reference state dict (`encoder`, `s2to1encoder`, `quant_conv`,
`quantize`, `post_quant_conv`, `s1to2decoder`, `decoder`; `s2dencoder`/`s2ddecoder` for 2D) so that
a converter maps names one to one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gigatok_jax.models.cnn import CNNDecoder, CNNEncoder
from gigatok_jax.models.layers import Dense, KeyGen, param, torch_default_uniform, trunc_normal_02
from gigatok_jax.models.qformer import QFormerDecoder, QFormerEncoder, ViTDecoder2D, ViTEncoder2D
from gigatok_jax.models.quantizer import make_quantizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TokenizerOutput(NamedTuple):
  reconstruction: jax.Array   # (B, H, W, 3) float32, [-1, 1] space (not clamped)
  indices: jax.Array          # (B, N) int32
  vq_loss: jax.Array
  commit_loss: jax.Array
  entropy_loss: jax.Array
  distill: jax.Array | None   # (B, hw, distill_dim) projected decoder features, or None
  encoder_map: jax.Array      # (B, g, g, z) CNN encoder output
  decoder_map: jax.Array      # (B, g, g, z) transformer decoder output (the CNN decoder's input)
  shortcut: jax.Array | None  # (B, H, W, 3) CNN decoder applied to encoder_map, or None


def grid_size(cfg: ml_collections.ConfigDict, image_size: int) -> int:
  return image_size // 2 ** (len(cfg.cnn_ch_mult) - 1)


def num_tokens(cfg: ml_collections.ConfigDict, image_size: int) -> int:
  """Tokens per image: `model.num_latent_tokens` for a 1D tokenizer that sets it, else grid^2."""
  n = int(cfg.get("num_latent_tokens", 0) or 0)
  return n if n > 0 and cfg.kind == "1d" else grid_size(cfg, image_size) ** 2


class Tokenizer(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, image_size: int, *, rngs: nnx.Rngs):
    rngs = KeyGen(rngs)
    dtype = DTYPES[cfg.dtype]
    pdt = DTYPES[cfg.param_dtype]
    grid = grid_size(cfg, image_size)
    self.kind = cfg.kind
    self.grid = grid
    cnn = dict(ch=cfg.cnn_ch, ch_mult=tuple(cfg.cnn_ch_mult), num_res_blocks=cfg.cnn_num_res_blocks,
               z_channels=cfg.z_channels, rngs=rngs, dtype=dtype, param_dtype=pdt,
               remat=cfg.remat, norm_groups=cfg.get("cnn_norm_groups", 32))
    self.encoder = CNNEncoder(**cnn)
    self.decoder = CNNDecoder(**cnn)
    enc = dict(grid=grid, z_channels=cfg.z_channels, width=cfg.enc_width, layers=cfg.enc_layers,
               heads=cfg.enc_heads, mlp_ratio=cfg.mlp_ratio, rngs=rngs, dtype=dtype,
               param_dtype=pdt, remat=cfg.remat, scan_layers=cfg.get("scan_layers", False))
    dec = dict(grid=grid, z_channels=cfg.z_channels, width=cfg.dec_width, layers=cfg.dec_layers,
               heads=cfg.dec_heads, mlp_ratio=cfg.mlp_ratio, distill_depth=cfg.distill_depth,
               distill_dim=cfg.distill_dim, rngs=rngs, dtype=dtype, param_dtype=pdt,
               remat=cfg.remat, scan_layers=cfg.get("scan_layers", False))
    self.num_tokens = num_tokens(cfg, image_size)
    if cfg.kind == "1d":
      self.s2to1encoder = QFormerEncoder(num_tokens=self.num_tokens, **enc)
      self.s1to2decoder = QFormerDecoder(num_tokens=self.num_tokens,
                                         query_init=cfg.get("dec_query_init", "first_token"), **dec)
    elif cfg.kind == "2d":
      self.s2dencoder = ViTEncoder2D(layer_type=cfg.vit_layer_type, **enc)
      self.s2ddecoder = ViTDecoder2D(layer_type=cfg.vit_layer_type, **dec)
    else:
      raise ValueError(f"unknown tokenizer kind {cfg.kind!r}")
    z, d = cfg.z_channels, cfg.code_dim
    # Built after the reference's init pass, so they keep torch's default init.
    self.quant_conv = Dense(z, d, rngs=rngs, axes=("z_channels", "code_dim"),
                            kernel_init=torch_default_uniform(z), bias_init=torch_default_uniform(z))
    self.quantize = make_quantizer(cfg, rngs=rngs, param_dtype=pdt)   # model.quantizer
    self.post_quant_conv = Dense(d, z, rngs=rngs, axes=("code_dim", "z_channels"),
                                 kernel_init=torch_default_uniform(d),
                                 bias_init=torch_default_uniform(d))
    # Nested dropout (FlexTok-style ordered tokens, `model.nested_dropout`): the decoder sees the
    # first k tokens and this learned vector in place of the others. Made last and only when on,
    # so that every other weight initialises as without it.
    self.nested_dropout = tuple(int(k) for k in (cfg.get("nested_dropout", ()) or ()))
    self.mask_token = (param(rngs, trunc_normal_02, (z,), ("z_channels",), pdt)
                       if self.nested_dropout else None)

  # --- pieces -------------------------------------------------------------------------------
  def _encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 3) in [-1, 1] -> (CNN map (B, g, g, z), latents (B, N, code_dim))."""
    h = self.encoder(images)                                     # (B, g, g, z)
    if self.kind == "1d":
      tokens = self.s2to1encoder(h)                              # (B, N, z)
    else:
      tokens = self.s2dencoder(h).reshape(h.shape[0], -1, h.shape[-1])
    return h, self.quant_conv(tokens)                            # (B, N, code_dim)

  def _decode_map(self, quantized: jax.Array, with_distill: bool, keep=None):
    """(B, N, code_dim) -> (map (B, g, g, z) for the CNN decoder, distill features or None).
    `keep` (int or (B,) ints, nested dropout only): tokens at positions >= keep become the mask
    token."""
    tokens = self.post_quant_conv(quantized)                     # (B, N, z)
    if keep is not None:
      if self.mask_token is None:
        raise ValueError("decoding from a prefix of the tokens needs a tokenizer trained with "
                         "model.nested_dropout")
      b, n, _ = tokens.shape
      kept = jnp.arange(n)[None, :] < jnp.broadcast_to(jnp.asarray(keep), (b,))[:, None]
      tokens = jnp.where(kept[..., None], tokens, self.mask_token[...].astype(tokens.dtype))
    if self.kind == "1d":
      return self.s1to2decoder(tokens, with_distill)
    b, n, z = tokens.shape
    return self.s2ddecoder(tokens.reshape(b, self.grid, self.grid, z), with_distill)

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) in [-1, 1] -> (B, N, code_dim) pre-quantization latents."""
    return self._encode(images)[1]

  def decode_quantized(self, quantized: jax.Array, with_distill: bool = False, keep=None):
    """(B, N, code_dim) -> ((B, H, W, 3) image, distill features or None)."""
    grid_map, distill = self._decode_map(quantized, with_distill, keep)
    return self.decoder(grid_map).astype(jnp.float32), distill

  # --- public API ---------------------------------------------------------------------------
  def encode(self, images: jax.Array) -> jax.Array:
    """Images -> code indices (B, N)."""
    return self.quantize(self.encode_latents(images)).indices

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Code indices (B, N) -> images (B, H, W, 3). A prefix (B, k), k < N, of a tokenizer trained
    with nested dropout decodes with the mask token in the other N - k places."""
    k = indices.shape[1]
    keep = None
    if k < self.num_tokens:
      indices = jnp.pad(indices, ((0, 0), (0, self.num_tokens - k)))
      keep = k
    return self.decode_quantized(self.quantize.lookup(indices), keep=keep)[0]

  def __call__(self, images: jax.Array, *, with_distill: bool = False,
               with_entropy: bool = False, with_shortcut: bool = False,
               keep=None) -> TokenizerOutput:
    """Full pass. `with_shortcut` also decodes the CNN encoder map directly (the reference's
    auxiliary "direct reconstruction" used early in training); `keep` decodes from the first
    `keep` tokens (int or (B,) ints; nested dropout)."""
    h, latents = self._encode(images)
    q = self.quantize(latents, with_entropy=with_entropy)
    grid_map, distill = self._decode_map(q.quantized, with_distill, keep)
    recon = self.decoder(grid_map).astype(jnp.float32)
    shortcut = self.decoder(h).astype(jnp.float32) if with_shortcut else None
    return TokenizerOutput(recon, q.indices, q.vq_loss, q.commit_loss, q.entropy_loss, distill,
                           h, grid_map, shortcut)
