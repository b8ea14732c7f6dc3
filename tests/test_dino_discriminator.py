"""The DINO discriminator (`discriminator.kind = 'dinodisc'`) against PyTorch, random weights.

Backbone: transformers' `ViTModel` (the real package) configured as DINO ViT-S/16 with the official
discriminator's tanh-GELU and LayerNorm eps 1e-6; its weights go through a rename to the timm layout
of `dino_deitsmall16_pretrain.pth` (written below, the only restated part) and our converter. The
readouts are hidden_states[0, 3, 6, 9, 12] with the cls token added to every patch token.
Heads: torch `nn.Conv1d(padding_mode='circular')` wrapped in torch's own `spectral_norm` (one power
iteration per training call), BatchNormLocal and the residual written from the official semantics
(gigatok_jax/models/dino_discriminator.py docstring), in the official module order, so the state
dict has the released file's key names.
Resizes: torch `F.interpolate` 'area' and 'bicubic'. DiffAug: written here from the official
semantics (models/diffaug.py docstring) and fed the same uniform draws.
Tolerances (max abs error / max |reference|, float32): readouts and logits 1e-5, u / v 1e-6,
resizes 1e-5 (crop 1e-6), augmentation 1e-6.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gigatok_jax.convert import dino_discriminator as convert  # noqa: E402
from gigatok_jax.convert import weight_files  # noqa: E402
from gigatok_jax.errors import CheckpointError  # noqa: E402
from gigatok_jax.models import diffaug  # noqa: E402
from gigatok_jax.models import dino_discriminator as dd  # noqa: E402

torch.set_num_threads(2)


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ------------------------------------------------------------------------------------------------ backbone
def _hf_vit():
  from transformers import ViTConfig, ViTModel  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                             intermediate_size=1536, hidden_act="gelu_pytorch_tanh",
                             layer_norm_eps=1e-6, image_size=224, patch_size=16),
                   add_pooling_layer=False).eval()
  with torch.no_grad():                     # random, non-trivial norms and biases
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layernorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def _timm_state_dict(hf) -> dict:
  """transformers ViT names -> the timm names of dino_deitsmall16_pretrain.pth (q|k|v fused)."""
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
         "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
         "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
  for i in range(12):
    p, q = f"layers.{i}.", f"blocks.{i}."
    out[q + "attn.qkv.weight"] = np.concatenate([sd[p + f"attention.{n}_proj.weight"] for n in "qkv"])
    out[q + "attn.qkv.bias"] = np.concatenate([sd[p + f"attention.{n}_proj.bias"] for n in "qkv"])
    out[q + "attn.proj.weight"], out[q + "attn.proj.bias"] = (sd[p + "attention.o_proj.weight"],
                                                              sd[p + "attention.o_proj.bias"])
    for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
      out[q + ours + ".weight"], out[q + ours + ".bias"] = sd[p + theirs + ".weight"], sd[p + theirs + ".bias"]
    for n in ("fc1", "fc2"):
      out[q + f"mlp.{n}.weight"], out[q + f"mlp.{n}.bias"] = sd[p + f"mlp.{n}.weight"], sd[p + f"mlp.{n}.bias"]
  return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  hf = _hf_vit()
  path = str(tmp_path_factory.mktemp("dino") / "dino_vits16.safetensors")
  pth = str(tmp_path_factory.mktemp("dino") / "dino_deitsmall16_pretrain.pth")
  torch.save({k: torch.from_numpy(v) for k, v in _timm_state_dict(hf).items()}, pth)
  assert convert.main([f"--src={pth}", f"--out={path}"]) == 0
  return hf, convert.load_backbone(path), pth


def test_backbone_readouts_match_transformers_vit(backbone):
  hf, ours, _ = backbone
  x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    states = hf(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2),
                output_hidden_states=True).hidden_states
  graph, params = nnx.split(ours)
  got = jax.jit(lambda p, x: nnx.merge(graph, p)(x))(params, jnp.asarray(x))
  for readout, depth in zip(got, (0, 3, 6, 9, 12)):
    ref = (states[depth][:, 1:] + states[depth][:, :1]).numpy()
    assert _rel(readout, ref) < 1e-5, depth


def test_backbone_converter_zeroes_the_key_bias_and_is_strict(backbone):
  _, ours, pth = backbone
  assert float(jnp.abs(ours.blocks[3].attn.key_bias[...]).max()) == 0.0
  assert float(jnp.abs(ours.blocks[3].attn.query_bias[...]).max()) > 0.0
  sd = weight_files.read_torch_state_dict(pth)
  del sd["blocks.4.mlp.fc1.bias"]
  with pytest.raises(CheckpointError, match="blocks.4.mlp.fc1.bias"):
    convert.backbone_from_torch(sd)


# ------------------------------------------------------------------------------------------------ heads
class TBatchNormLocal(nn.Module):
  def __init__(self, c, eps=1e-6, virtual_bs=8):
    super().__init__()
    self.eps, self.virtual_bs = eps, virtual_bs
    self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

  def forward(self, x):                      # (B, C, L)
    groups = int(np.ceil(x.size(0) / self.virtual_bs))
    g = x.view(groups, -1, x.size(-2), x.size(-1))
    mean, var = g.mean([1, 3], keepdim=True), g.var([1, 3], keepdim=True, unbiased=False)
    g = (g - mean) / torch.sqrt(var + self.eps)
    return g.view(x.shape) * self.weight[None, :, None] + self.bias[None, :, None]


class TResidual(nn.Module):
  def __init__(self, fn):
    super().__init__()
    self.fn = fn

  def forward(self, x):
    return (self.fn(x) + x) / np.sqrt(2)


def _sn_conv(cin, cout, k):
  return nn.utils.spectral_norm(nn.Conv1d(cin, cout, k, padding=k // 2, padding_mode="circular"))


def _block(c, k):
  return nn.Sequential(_sn_conv(c, c, k), TBatchNormLocal(c), nn.LeakyReLU(0.2))


class TDisc(nn.Module):
  """The trained part of the official DinoDisc: `heads`, five of them (the backbone is not a
  registered submodule there, so the state dict holds only `heads.*`)."""

  def __init__(self, c=384, k=9):
    super().__init__()
    torch.manual_seed(1)
    self.heads = nn.ModuleList([nn.Sequential(_block(c, 1), TResidual(_block(c, k)),
                                              _sn_conv(c, 1, 1)) for _ in range(5)])
    with torch.no_grad():
      for name, p in self.heads.named_parameters():
        if name.endswith(".weight") and p.ndim == 1:      # BatchNormLocal affine
          p.add_(0.2 * torch.randn_like(p))


def test_heads_match_torch_spectral_norm_in_training_and_eval():
  compare_heads(TDisc())


def compare_heads(disc):
  """Our heads, converted from `disc`'s state dict, against `disc.heads` (five torch heads in the
  official order) on the same readouts: logits in training and eval, and the spectral vectors one
  power iteration on. tests/test_official_code.py runs it on the official DinoDisc itself."""
  heads = disc.heads
  sd = {k: v.numpy().copy() for k, v in disc.state_dict().items() if k.startswith("heads.")}
  params, stats = convert.heads_from_torch(sd)
  ours = nnx.eval_shape(lambda: dd.DinoDiscriminatorHeads(rngs=nnx.Rngs(0)))
  graph, p_abs, s_abs = nnx.split(ours, nnx.Param, nnx.BatchStat)
  to_state = lambda flat, abstract: jax.tree.map(  # noqa: E731
      lambda _, path: jnp.asarray(flat[path]), nnx.to_pure_dict(abstract),
      _paths(nnx.to_pure_dict(abstract)))
  p, s = to_state(params, p_abs), to_state(stats, s_abs)
  rng = np.random.default_rng(2)
  readouts = [rng.normal(size=(16, 196, 384)).astype(np.float32) for _ in range(5)]

  def ours_fn(p, s, xs, train):
    model = nnx.merge(graph, p, s)
    out = model(xs, train=train)
    return out, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  for train in (True, False):
    heads.train(train)
    with torch.no_grad():
      ref = torch.cat([h(torch.from_numpy(r).transpose(1, 2)).reshape(16, -1)
                       for h, r in zip(heads, readouts)], dim=1).numpy()
    got, new_s = jax.jit(ours_fn, static_argnums=3)(p, s, [jnp.asarray(r) for r in readouts], train)
    assert _rel(got, ref) < 1e-5, train
    u_ref, v_ref = heads[2][1].fn[0].weight_u.numpy(), heads[2][1].fn[0].weight_v.numpy()
    assert _rel(new_s["heads"][2]["conv2"]["u"], u_ref) < 1e-6
    assert _rel(new_s["heads"][2]["conv2"]["v"], v_ref) < 1e-6
    s = new_s                                              # eval reuses the trained u / v


def _paths(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: _paths(v, f"{prefix}{k}.") for k, v in tree.items()}
  return prefix[:-1]


def test_heads_converter_rejects_foreign_entries():
  sd = {k: v.numpy() for k, v in TDisc().state_dict().items()}
  sd["heads.0.3.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError, match="heads.0.3.weight"):
    convert.heads_from_torch(sd)


def test_batch_norm_local_needs_equal_groups():
  norm = dd.BatchNormLocal(4, rngs=dd.KeyGen(nnx.Rngs(0)))
  assert norm(jnp.ones((10, 3, 4))).shape == (10, 3, 4)     # 2 groups of 5, as torch's view
  with pytest.raises(ValueError, match="batch 9"):
    norm(jnp.zeros((9, 3, 4)))


# ------------------------------------------------------------------------------------------------ input
@pytest.mark.parametrize("size,mode", [(256, "area"), (64, "bicubic"), (224, "bicubic")])
def test_backbone_input_resizes_like_torch(size, mode):
  x = np.random.default_rng(3).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  mean = torch.tensor((0.485, 0.456, 0.406)).reshape(1, 3, 1, 1)
  std = torch.tensor((0.229, 0.224, 0.225)).reshape(1, 3, 1, 1)
  t = (torch.from_numpy(x).permute(0, 3, 1, 2) + 1) / 2
  ref = F.interpolate((t - mean) / std, size=(224, 224), mode=mode).permute(0, 2, 3, 1).numpy()
  assert _rel(dd.backbone_input(jnp.asarray(x)), ref) < 1e-5     # bicubic as two matmuls: 3e-6
  if size > 224:
    crop = dd.backbone_input(jnp.asarray(x), (jnp.int32(5), jnp.int32(17)))
    full = ((t - mean) / std).permute(0, 2, 3, 1).numpy()
    assert _rel(crop, full[:, 5:229, 17:241]) < 1e-6


def _torch_diffaug(x, r):
  """The official DiffAug with prob 1 and cutout 0.2, on (B, C, H, W) with draws r (7, B, 1, 1)."""
  b, _, h, w = x.shape
  dh, dw = round(h * 0.125), round(w * 0.125)
  th = (r[0] * (2 * dh + 1)).floor().long() - dh
  tw = (r[1] * (2 * dw + 1)).floor().long() - dw
  gb, gh, gw = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
  gh, gw = (gh + th + 1).clamp(0, h + 1), (gw + tw + 1).clamp(0, w + 1)
  x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gh, gw].permute(0, 3, 1, 2)
  x = x + (r[2].unsqueeze(-1) - 0.5)
  m = x.mean(dim=1, keepdim=True)
  x = (x - m) * (r[3].unsqueeze(-1) * 2) + m
  m = x.mean(dim=(1, 2, 3), keepdim=True)
  x = (x - m) * (r[4].unsqueeze(-1) + 0.5) + m
  ch, cw = round(h * 0.2), round(w * 0.2)
  oh = (r[5] * (h + (1 - ch % 2))).floor().long()
  ow = (r[6] * (w + (1 - cw % 2))).floor().long()
  gb, gh, gw = torch.meshgrid(torch.arange(b), torch.arange(ch), torch.arange(cw), indexing="ij")
  gh, gw = (gh + oh - ch // 2).clamp(0, h - 1), (gw + ow - cw // 2).clamp(0, w - 1)
  mask = torch.ones(b, h, w)
  mask[gb, gh, gw] = 0
  return x * mask.unsqueeze(1)


@pytest.mark.parametrize("shape", [(6, 32, 32), (3, 256, 200)])
def test_diffaug_matches_the_official_arithmetic(shape):
  rng = np.random.default_rng(4)
  b, h, w = shape
  x = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  draws = rng.uniform(0, 1, (7, b)).astype(np.float32)
  draws[:, 0] = [0.0, 0.999, 0.5, 0.0, 0.999, 0.0, 0.999]     # extreme shifts and cut-outs
  ref = _torch_diffaug(torch.from_numpy(x).permute(0, 3, 1, 2),
                       torch.from_numpy(draws).reshape(7, b, 1, 1)).permute(0, 2, 3, 1).numpy()
  assert _rel(diffaug.augment(jnp.asarray(x), jnp.asarray(draws)), ref) < 1e-6


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_dino_discriminator_trains_on_the_tiny_recipe(tmp_path):
  """configs/tokenizer_bl_dino_disc.py:tiny with a random-weight backbone file: the config checks
  ask for the file first; then the real loop runs past the discriminator start, the heads and their
  spectral vectors change, the generator gets an adversarial term, and a checkpoint is written."""
  import os  # pylint: disable=import-outside-toplevel
  from gigatok_jax.config import validate  # pylint: disable=import-outside-toplevel
  from gigatok_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from gigatok_jax.train import loop  # pylint: disable=import-outside-toplevel
  from helpers import load_recipe  # pylint: disable=import-outside-toplevel
  config = load_recipe("tokenizer_bl_dino_disc", "tiny")
  config.mesh.data = 1
  assert config.discriminator.kind == "dinodisc"
  with pytest.raises(ConfigError, match="teachers.dino_disc_path"):
    validate.validate(config, num_devices=1)
  path = str(tmp_path / "dino_vits16.safetensors")
  weight_files.save_flat(path, weight_files.flatten_module(
      dd.DinoViTSmall(rngs=nnx.Rngs(3), depth=config.discriminator.depth)), {"model": dd.MODEL_NAME})
  config.teachers.dino_disc_path = path
  config.update(total_steps=2, checkpoint_every_steps=2, image_every_steps=100)
  config.loss.update(disc_start_step=0, aux_loss_end=0)          # one compiled step, GAN on
  validate.validate(config, num_devices=1)
  workdir = str(tmp_path / "run")
  task_state = loop.train(config, workdir, progress=False, devices=jax.devices()[:1])
  assert int(task_state.step) == 2
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  # The discriminator starts from seed + 1 (train/tokenizer.py); after two GAN steps it has moved.
  assert len(task_state.disc_params["heads"]) == 2                   # depth 3: readouts 0 and 2
  fresh_params = nnx.to_pure_dict(nnx.state(
      dd.DinoDiscriminatorHeads(rngs=nnx.Rngs(config.seed + 1), depth=3), nnx.Param))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(jnp.asarray(a) - b).max()),
                       task_state.disc_params, fresh_params)
  assert max(jax.tree.leaves(moved)) > 0
  u = task_state.disc_stats["heads"][0]["conv1"]["u"]
  assert abs(float(jnp.linalg.norm(u)) - 1.0) < 1e-5


def test_diffaug_keeps_the_batch_sharded():
  """The augmentation has no op that gathers across the batch: on 8 devices its lowered program
  has no collective, and its output keeps the input's batch sharding."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  x = jax.device_put(jnp.zeros((8, 32, 32, 3)), sharding)
  draws = jax.device_put(jnp.full((7, 8), 0.3), NamedSharding(mesh, P(None, "data")))
  fn = jax.jit(diffaug.augment)
  text = fn.lower(x, draws).compile().as_text()
  assert not any(op in text for op in ("all-reduce", "all-gather", "all-to-all")), "collective"
  assert fn(x, draws).sharding.spec[0] == "data"
