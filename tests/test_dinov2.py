"""DINOv2 teacher: parity with random-weight Hugging Face models, converter layouts, CLI, resizes.

Why HF models as the reference: `transformers` is the one installable implementation of DINOv2
(the facebookresearch hub code is not a package). checkpoint_layouts.md 3.2 documents that a hub
model renamed to HF names gives exactly the same outputs, so hub files are covered by showing that
the hub layout (built from the HF state dict by the documented renaming, fused qkv / w12) converts
to bit-identical parameters.

Every HF model gets random norm affines, biases, LayerScale, cls / register / position embeddings
and 1/sqrt(fan_in) weights (HF initialises these to constants or near zero), so a swapped or
dropped parameter shows. Tolerance: patch tokens, cls token and intermediates agree to 1e-4 max
abs error in float32. Negative controls (wrong pos-resize method, swapped q/k, jax's own bicubic)
must differ by far more.

Sizes: S/14 at full depth 12 and B/14 with 2 blocks at their real widths; the register and SwiGLU
models use width 128 (2 heads of 64), depth 2.
"""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gigatok_jax.convert import dinov2 as conv  # noqa: E402
from gigatok_jax.convert import weight_files  # noqa: E402
from gigatok_jax.errors import CheckpointError  # noqa: E402
from gigatok_jax.models import dinov2  # noqa: E402

torch.set_num_threads(2)

TOL = 1e-4          # max abs error of float32 outputs vs the torch reference
MARGIN = 1e-2       # negative controls must differ by more than this (100 x TOL)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def max_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def assert_close(ours, ref, tol, what):
  err = max_err(ours, ref)
  print(f"[parity] {what}: max abs err {err:.2e} (tol {tol:.0e}, max |ref| "
        f"{float(np.max(np.abs(ref))):.2f})")
  assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.0e}"


def assert_differs(ours, wrong, what):
  err = max_err(ours, wrong)
  print(f"[control] {what}: diff {err:.2e} (must exceed {MARGIN:.0e})")
  assert err > MARGIN, f"negative control '{what}' not detected (diff {err:.3e})"


def nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
  g = torch.Generator().manual_seed(seed)

  def fill(t, std, mean=0.0):
    t.copy_(mean + std * torch.randn(t.shape, generator=g))

  for m in model.modules():
    if isinstance(m, nn.LayerNorm):
      fill(m.weight, 0.2, 1.0)
      fill(m.bias, 0.2)
    elif isinstance(m, (nn.Linear, nn.Conv2d)):
      fill(m.weight, m.weight[0].numel() ** -0.5)
      fill(m.bias, 0.1)
  for name, p in model.named_parameters():
    if name.endswith(("lambda1", "cls_token", "position_embeddings", "register_tokens")):
      fill(p, 0.5)
  return model.eval()


def hf_model(width, depth, heads, grid, *, registers=0, swiglu=False, seed=0):
  """A random-weight HF model whose stored pos-embed covers grid x grid patches."""
  kw = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
            image_size=14 * grid, patch_size=14, use_swiglu_ffn=swiglu, layer_norm_eps=1e-6)
  torch.manual_seed(seed)
  if registers:
    model = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
  randomize_(model, seed)
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return model, sd


@torch.no_grad()
def hf_forward(model, x, registers, n_inter):
  out = model(pixel_values=nchw(x), output_hidden_states=True)
  first = 1 + registers
  seq = out.last_hidden_state
  inter = [model.layernorm(h)[:, first:].numpy() for h in out.hidden_states[-n_inter:]]
  return seq[:, 0].numpy(), seq[:, first:].numpy(), inter


def ours_from(sd, pos_resize, dtype=jnp.float32) -> dinov2.DinoV2:
  cfg = conv.infer_config(sd, pos_resize=pos_resize)
  return conv.model_from_flat(conv.convert_state_dict(sd, cfg), cfg, dtype=dtype)


def run(model, x, n_inter=0) -> dinov2.DinoV2Output:
  """Jitted forward (one compile beats eager op-by-op dispatch for 12 blocks)."""
  return nnx.jit(lambda m, y: m(y, n_intermediate=n_inter))(model, jnp.asarray(x))


def check_parity(model_t, ours, hw, registers, what, n_inter=2, seed=0):
  x = np.random.default_rng(seed).standard_normal((2, *hw, 3)).astype(np.float32)
  cls_t, patch_t, inter_t = hf_forward(model_t, x, registers, n_inter)
  out = run(ours, x, n_inter)
  assert out.patch_tokens.shape == patch_t.shape == (2, (hw[0] // 14) * (hw[1] // 14),
                                                      ours.config.width)
  assert_close(out.patch_tokens, patch_t, TOL, f"{what} {hw} patch tokens")
  assert_close(out.cls, cls_t, TOL, f"{what} {hw} cls")
  assert len(out.intermediates) == n_inter
  for j, (a, b) in enumerate(zip(out.intermediates, inter_t)):
    assert_close(a, b, TOL, f"{what} {hw} intermediate {j - n_inter}")
  return x, out, patch_t


def hub_from_hf(sd, depth, swiglu):
  """The documented hub layout (3.1 / 3.2) built from HF 5.x names: fused qkv and w12."""
  e = "embeddings."
  hub = {"cls_token": sd[e + "cls_token"], "mask_token": sd[e + "mask_token"],
         "pos_embed": sd[e + "position_embeddings"],
         "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
         "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
  if e + "register_tokens" in sd:
    hub["register_tokens"] = sd[e + "register_tokens"]
  for i in range(depth):
    s, o = f"encoder.layer.{i}.", f"blocks.{i}."
    hub[o + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
    hub[o + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
    for p in ("weight", "bias"):
      for n in ("norm1", "norm2"):
        hub[o + f"{n}.{p}"] = sd[s + f"{n}.{p}"]
      hub[o + f"attn.qkv.{p}"] = np.concatenate([sd[s + f"attention.{q}_proj.{p}"] for q in "qkv"])
      hub[o + f"attn.proj.{p}"] = sd[s + f"attention.o_proj.{p}"]
      if swiglu:
        hub[o + f"mlp.w12.{p}"] = np.concatenate([sd[s + f"mlp.gate_proj.{p}"],
                                                  sd[s + f"mlp.up_proj.{p}"]])
        hub[o + f"mlp.w3.{p}"] = sd[s + f"mlp.down_proj.{p}"]
      else:
        for n in ("fc1", "fc2"):
          hub[o + f"mlp.{n}.{p}"] = sd[s + f"mlp.{n}.{p}"]
  assert len(hub) == len(sd) - (6 if swiglu else 4) * depth   # every HF tensor used once
  return hub


V4_NAMES = {"attention.q_proj": "attention.attention.query",
            "attention.k_proj": "attention.attention.key",
            "attention.v_proj": "attention.attention.value",
            "attention.o_proj": "attention.output.dense", "mlp.down_proj": "mlp.weights_out"}


def v4_from_v5(sd):
  """transformers 4.x on-disk names (3.2): fused SwiGLU weights_in = [gate; up]."""
  out = {}
  for k, v in sd.items():
    m = re.fullmatch(r"(encoder\.layer\.\d+\.)(.*)\.(weight|bias)", k)
    if m and m.group(2) == "mlp.gate_proj":
      up = sd[f"{m.group(1)}mlp.up_proj.{m.group(3)}"]
      out[f"{m.group(1)}mlp.weights_in.{m.group(3)}"] = np.concatenate([v, up])
    elif m and m.group(2) == "mlp.up_proj":
      continue
    elif m and m.group(2) in V4_NAMES:
      out[f"{m.group(1)}{V4_NAMES[m.group(2)]}.{m.group(3)}"] = v
    else:
      out[k] = v
  return out


def assert_same_flat(a, b, what):
  assert sorted(a) == sorted(b), what
  for k in a:
    assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), f"{what}: {k}"


# ------------------------------------------------------------------------------------------------
# fixtures: the HF reference models (built once)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small14():      # S/14 at full depth, stored grid 37 as the released files
  return hf_model(384, 12, 6, 37, seed=1)


@pytest.fixture(scope="module")
def base14():       # B/14, 2 blocks, stored grid 16 (as after GigaTok's resize)
  return hf_model(768, 2, 12, 16, seed=2)


@pytest.fixture(scope="module")
def reg4():         # with 4 registers, width 128, grid 37
  return hf_model(128, 2, 2, 37, registers=4, seed=3)


@pytest.fixture(scope="module")
def swiglu():       # g/14-style SwiGLU FFN, width 128, grid 16
  return hf_model(128, 2, 2, 16, swiglu=True, seed=4)


# ------------------------------------------------------------------------------------------------
# resampling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size_in", [256, 200])
def test_teacher_input_matches_torch(size_in):
  x = np.random.default_rng(0).uniform(-1, 1, (2, size_in, size_in, 3)).astype(np.float32)
  t = (nchw(x) + 1) / 2
  mean = torch.tensor(dinov2.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(dinov2.IMAGENET_STD).view(1, 3, 1, 1)
  ref = F.interpolate((t - mean) / std, size=224, mode="bicubic", align_corners=False)
  ref = ref.numpy().transpose(0, 2, 3, 1)
  ours = dinov2.teacher_input(jnp.asarray(x), size=224)
  assert ours.shape == (2, 224, 224, 3) and ours.dtype == jnp.float32
  assert_close(ours, ref, 1e-5, f"teacher_input {size_in}->224")
  # jax's own bicubic (Keys A=-0.5, antialias) is not torch's.
  x01 = (jnp.asarray(x) + 1) / 2
  norm = (x01 - jnp.asarray(dinov2.IMAGENET_MEAN)) / jnp.asarray(dinov2.IMAGENET_STD)
  assert_differs(ours, jax.image.resize(norm, (2, 224, 224, 3), "bicubic"),
                 f"jax.image.resize bicubic {size_in}->224")


@pytest.mark.parametrize("src,dst", [((37, 37), (16, 16)), ((16, 16), (20, 20)),
                                     ((37, 37), (9, 12)), ((16, 16), (12, 20))])
def test_pos_resize_methods_match_torch(src, dst):
  g = np.random.default_rng(1).standard_normal((*src, 32)).astype(np.float32)
  t = torch.from_numpy(g.transpose(2, 0, 1)[None].copy())
  out = {}
  for method, aa in (("timm", True), ("hf", False)):
    ref = F.interpolate(t, size=dst, mode="bicubic", align_corners=False, antialias=aa)
    out[method] = dinov2.resize_grid(jnp.asarray(g), dst, method)
    assert_close(out[method], ref[0].numpy().transpose(1, 2, 0), 1e-5, f"{method} {src}->{dst}")
  assert_differs(out["timm"], out["hf"], f"timm vs hf {src}->{dst}")


def test_variant_shapes_and_param_counts():
  documented = {"vits14": 22.06, "vitb14": 86.58, "vitl14": 304.37, "vitg14": 1136.48}  # M, 3.1
  for name, millions in documented.items():
    cfg = dinov2.DinoV2Config.from_variant(name)
    model = nnx.eval_shape(lambda c=cfg: dinov2.DinoV2(c, rngs=nnx.Rngs(0)))
    n = dinov2.num_params(model) + cfg.width                 # + the hub's unused mask_token
    assert round(n / 1e6, 2) == millions, (name, n)
  g = dinov2.DinoV2Config.from_variant("dinov2_vitg14_reg4")
  assert (g.swiglu, g.mlp_hidden, g.num_registers, g.heads, g.depth) == (True, 4096, 4, 24, 40)
  assert dinov2.DinoV2Config.from_variant("vitb14", depth=2).depth == 2
  with pytest.raises(ValueError, match="unknown DINOv2 variant"):
    dinov2.DinoV2Config.from_variant("vith14")


# ------------------------------------------------------------------------------------------------
# parity with transformers
# ------------------------------------------------------------------------------------------------
def test_small14_parity_hf_resize(small14):
  model_t, sd = small14
  cfg = conv.infer_config(sd, pos_resize="hf")
  assert (cfg.variant, cfg.depth, cfg.heads, cfg.pos_grid, cfg.num_registers) == \
      ("vits14", 12, 6, 37, 0)
  ours = ours_from(sd, "hf")
  x, out, ref = check_parity(model_t, ours, (224, 224), 0, "S/14 hf", n_inter=3)
  check_parity(model_t, ours, (126, 126), 0, "S/14 hf", n_inter=1, seed=1)
  # Negative control: GigaTok's antialiased resize is not what HF Dinov2Model does on the fly.
  ours.config = dataclasses.replace(ours.config, pos_resize="timm")
  assert_differs(run(ours, x).patch_tokens, ref, "S/14 timm resize vs HF")


def test_base14_parity_reduced_depth(base14):
  model_t, sd = base14
  cfg = conv.infer_config(sd)
  assert (cfg.variant, cfg.depth, cfg.heads, cfg.pos_grid) == ("vitb14", 2, 12, 16)
  ours = ours_from(sd, "hf")
  check_parity(model_t, ours, (224, 224), 0, "B/14x2")                  # stored grid, no resize
  check_parity(model_t, ours, (168, 280), 0, "B/14x2 hf", seed=1)       # 16x16 -> 12x20


def test_registers_parity_and_controls(reg4):
  model_t, sd = reg4
  cfg = conv.infer_config(sd)
  assert (cfg.variant, cfg.num_registers, cfg.heads, cfg.pos_grid) == ("custom", 4, 2, 37)
  ours = ours_from(sd, "timm")
  x, out, ref = check_parity(model_t, ours, (224, 224), 4, "reg4 timm")
  check_parity(model_t, ours, (126, 126), 4, "reg4 timm", seed=1)
  # Negative controls: HF Dinov2Model's resize; q and k kernels of block 0 swapped.
  wrong = ours_from(sd, "hf")
  assert_differs(run(wrong, x).patch_tokens, ref, "reg4 hf resize vs antialiased")
  attn = ours.blocks[0].attn
  q, k = attn.query[...], attn.key[...]
  attn.query[...], attn.key[...] = k, q
  assert_differs(run(ours, x).patch_tokens, ref, "reg4 swapped q/k")


def test_swiglu_parity(swiglu):
  model_t, sd = swiglu
  cfg = conv.infer_config(sd)
  assert (cfg.variant, cfg.swiglu, cfg.mlp_hidden) == ("custom", True, 344)
  ours = ours_from(sd, "timm")
  x, out, ref = check_parity(model_t, ours, (224, 224), 0, "swiglu")
  # bf16 compute: same weights, loose agreement, bf16 outputs.
  low = ours_from(sd, "timm", dtype=jnp.bfloat16)
  y = run(low, x).patch_tokens
  assert y.dtype == jnp.bfloat16
  cos = np.sum(np.asarray(y, np.float32) * ref, -1) / (
      np.linalg.norm(np.asarray(y, np.float32), axis=-1) * np.linalg.norm(ref, axis=-1))
  assert cos.min() > 0.99, cos.min()


# ------------------------------------------------------------------------------------------------
# layouts, strictness, CLI
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["base14", "swiglu", "reg4"])
def test_all_layouts_convert_identically(which, request):
  _, sd = request.getfixturevalue(which)
  cfg = conv.infer_config(sd)
  ref = conv.convert_state_dict(sd, cfg)                     # HF 5.x in-memory names
  hub = hub_from_hf(sd, cfg.depth, cfg.swiglu)
  assert conv.detect_layout(hub) == "hub" and conv.detect_layout(sd) == "hf"
  assert conv.infer_config(hub) == cfg
  assert_same_flat(conv.convert_state_dict(hub, cfg), ref, "hub layout")
  assert_same_flat(conv.convert_state_dict(v4_from_v5(sd), cfg), ref, "HF 4.x names")
  chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): v for k, v in hub.items()}
  assert_same_flat(conv.convert_state_dict(chunked, cfg), ref, "hub block_chunks layout")
  prefixed = {"dinov2." + k: v for k, v in sd.items()}
  assert_same_flat(conv.convert_state_dict(prefixed, cfg), ref, "dinov2. prefix")
  conv.check_fits_model(ref, cfg)


def test_strict_errors(base14):
  _, sd = base14
  cfg = conv.infer_config(sd)
  hub = hub_from_hf(sd, cfg.depth, cfg.swiglu)
  with pytest.raises(CheckpointError, match=r"unexpected.*blocks\.1\.attn\.extra\.weight"):
    conv.convert_state_dict({**hub, "blocks.1.attn.extra.weight": np.zeros(3)}, cfg)
  with pytest.raises(CheckpointError, match=r"unexpected.*head\.weight"):
    conv.convert_state_dict({**hub, "head.weight": np.zeros((10, 768))}, cfg)
  bad = dict(hub, **{"blocks.0.norm2.bias": np.zeros(767, np.float32)})
  with pytest.raises(CheckpointError, match=r"blocks\.0\.norm2\.bias: file \(767,\)"):
    conv.convert_state_dict(bad, cfg)
  missing = {k: v for k, v in hub.items() if k != "blocks.1.ls2.gamma"}
  with pytest.raises(CheckpointError, match=r"missing \['blocks\.1\.ls2\.gamma'\]"):
    conv.convert_state_dict(missing, cfg)
  # HF: one of q/k/v missing; the same tensor under its 4.x and 5.x names.
  no_v = {k: v for k, v in sd.items() if k != "encoder.layer.0.attention.v_proj.bias"}
  with pytest.raises(CheckpointError, match=r"attn\.qkv\.bias needs 3 parts"):
    conv.convert_state_dict(no_v, cfg)
  both = dict(sd, **{"encoder.layer.1.attention.output.dense.weight":
                     sd["encoder.layer.1.attention.o_proj.weight"]})
  with pytest.raises(CheckpointError, match=r"output\.dense\.weight.*o_proj\.weight|"
                                            r"o_proj\.weight.*output\.dense\.weight"):
    conv.convert_state_dict(both, cfg)
  with pytest.raises(CheckpointError, match="neither"):
    conv.convert_state_dict({"foo": np.zeros(1)}, cfg)


def test_cli_round_trip(reg4, base14, tmp_path, capsys):
  from safetensors.numpy import save_file
  model_t, sd = reg4
  src = tmp_path / "hf_reg4.safetensors"                      # HF on-disk (4.x) names
  save_file({k: np.ascontiguousarray(v) for k, v in v4_from_v5(sd).items()}, str(src))
  out = tmp_path / "dinov2_reg4_g16.safetensors"
  assert conv.main([f"--src={src}", f"--out={out}", "--pos_grid=16"]) == 0
  assert "custom_reg4" in capsys.readouterr().out
  meta = weight_files.read_metadata(str(out))
  assert meta["model"] == dinov2.MODEL_NAME
  ours = conv.load_dinov2(str(out))
  assert (ours.config.pos_grid, ours.config.num_registers) == (16, 4)
  assert ours.pos_embed[...].shape == (257, 128)
  # One-time timm resize 37 -> 16 == HF Dinov2WithRegisters' on-the-fly antialiased resize at 224.
  with capsys.disabled():
    check_parity(model_t, ours, (224, 224), 4, "reg4 CLI --pos_grid=16", n_inter=1)

  # torch-hub .pth through torch.load(weights_only=True); --variant checked against the shapes.
  _, sd_b = base14
  cfg_b = conv.infer_config(sd_b)
  pth = tmp_path / "hub_b.pth"
  torch.save({k: torch.from_numpy(v) for k, v in hub_from_hf(sd_b, 2, False).items()}, str(pth))
  out_b = tmp_path / "b.safetensors"
  assert conv.main([f"--src={pth}", f"--out={out_b}"]) == 0
  flat, meta = weight_files.load_flat(str(out_b), expect_model="dinov2")
  assert_same_flat(flat, conv.convert_state_dict(sd_b, cfg_b), "CLI .pth")
  assert conv.main([f"--src={pth}", f"--out={out_b}", "--variant=vitl14"]) == 1
  assert "not vitl14" in capsys.readouterr().err
  assert conv.main([f"--src={pth}", f"--out={out_b}", "--variant=vitb14"]) == 1   # 2 of 12 blocks
  assert "has 2 blocks" in capsys.readouterr().err
  # A leftover tensor makes the CLI fail with its name, writing nothing.
  bad = tmp_path / "bad.safetensors"
  save_file({**{k: np.ascontiguousarray(v) for k, v in sd_b.items()},
             "classifier.weight": np.zeros((2, 768), np.float32)}, str(bad))
  assert conv.main([f"--src={bad}", f"--out={tmp_path / 'never.safetensors'}"]) == 1
  assert "classifier.weight" in capsys.readouterr().err
  assert not (tmp_path / "never.safetensors").exists()
