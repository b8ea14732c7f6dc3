"""Parity of our LPIPS-VGG with the `lpips` package's own LPIPS(net='vgg', version='0.1').

Why a torchvision stand-in: lpips imports torchvision at import time, and torchvision cannot be
installed beside this torch build. lpips 0.1.4 only calls `torchvision.models.vgg16(pretrained=...)`
and takes its `.features`, so the test injects a minimal `torchvision` module whose `vgg16()` holds
an `nn.Sequential` in torchvision's exact VGG16 layer order (indices 0..30) and init. The trunk is
random (`pnet_rand=True`: the ImageNet file ships in no package, and the biases are randomised so
a dropped bias shows); the heads are the package's shipped v0.1 file, loaded by lpips itself. The
trunk's state dict is then written in torchvision's layout as a .pth and converted by our CLI, so
the comparison covers the converter's key mapping as well as the model.

Tolerances (max abs err / max |ref|): distances 1e-5, gradients w.r.t. the first image 1e-4.
Negative controls (no scaling layer, taps moved past the pools, no channel normalisation) must
differ from our output by more than 100x the distance tolerance. 64 x 64 images keep it fast.
"""

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import sys
import types

import numpy as np
import pytest

if importlib.util.find_spec("lpips") is None:
  pytest.skip("the `lpips` package is not installed (pip install --no-deps lpips==0.1.4)",
              allow_module_level=True)
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import gigatok_jax.parallel  # noqa: E402,F401  (same import order as the other parity tests)
from gigatok_jax.convert import lpips as convert_lpips  # noqa: E402
from gigatok_jax.convert import weight_files  # noqa: E402
from gigatok_jax.errors import CheckpointError  # noqa: E402
from gigatok_jax.models import lpips as lpips_model  # noqa: E402

torch.set_num_threads(2)

DIST_TOL = 1e-5
GRAD_TOL = 1e-4
B, HW = 2, 64
TAPS = (3, 8, 15, 22, 29)          # relu1_2 .. relu5_3 in torchvision's `features`
HEADS_MD5 = "d507d7349b931f0638a25a48a722f98a"


# ------------------------------------------------------------------------------------------------
# torchvision stand-in (test only)
# ------------------------------------------------------------------------------------------------
class _StandInVGG16(nn.Module):
  """`features` exactly as torchvision's vgg16 (cfg "D", no batch norm): conv3x3(pad 1) +
  ReLU(inplace) pairs with MaxPool2d(2, 2) after each block, 31 modules. Init as torchvision:
  kaiming normal (fan_out, relu), zero bias. avgpool / classifier are left out (unused by lpips,
  and 120M parameters)."""

  CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

  def __init__(self):
    super().__init__()
    mods, cin = [], 3
    for v in self.CFG:
      if v == "M":
        mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(conv.bias, 0)
        mods += [conv, nn.ReLU(inplace=True)]
        cin = v
    self.features = nn.Sequential(*mods)


def _standin_torchvision(created: list) -> types.ModuleType:
  tv = types.ModuleType("torchvision")
  models = types.ModuleType("torchvision.models")

  def vgg16(pretrained=False, weights=None, **kwargs):  # lpips 0.1.4: vgg16(pretrained=...)
    if pretrained or weights is not None:
      raise RuntimeError("torchvision stand-in: no ImageNet weights here "
                         "(build with pnet_rand=True)")
    net = _StandInVGG16()
    created.append(net)
    return net

  models.vgg16 = vgg16
  tv.models = models
  return tv


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------
def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Reference lpips model, its trunk as a torchvision .pth, our converted model, test images."""
  tmp = tmp_path_factory.mktemp("lpips")
  before = set(sys.modules)
  created = []
  try:
    with pytest.MonkeyPatch.context() as mp:
      tv = _standin_torchvision(created)
      mp.setitem(sys.modules, "torchvision", tv)
      mp.setitem(sys.modules, "torchvision.models", tv.models)
      import lpips as lpips_pkg
      torch.manual_seed(0)
      ref = lpips_pkg.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True,
                            verbose=False)
  finally:
    for name in set(sys.modules) - before:
      if name == "lpips" or name.startswith("lpips."):
        del sys.modules[name]
  assert len(created) == 1 and not ref.training
  features = created[0].features
  with torch.no_grad():
    for m in features:
      if isinstance(m, nn.Conv2d):
        m.bias.normal_(0.0, 0.05)

  # lpips `net.slice{s}.{idx}.*` -> torchvision `features.{idx}.*`
  vgg_sd = {}
  for k, v in ref.net.state_dict().items():
    m = re.fullmatch(r"slice[1-5]\.(\d+)\.(weight|bias)", k)
    assert m, k
    vgg_sd[f"features.{m[1]}.{m[2]}"] = v.detach().clone()
  assert set(vgg_sd) == set(created[0].state_dict()) == {
      f"features.{i}.{p}" for i in lpips_model.torchvision_conv_indices()
      for p in ("weight", "bias")}
  vgg_sd["classifier.0.weight"] = torch.zeros(4, 8)   # stand-ins: the converter must ignore them
  vgg_sd["classifier.6.bias"] = torch.zeros(4)
  vgg_path, out_path = str(tmp / "vgg16-random.pth"), str(tmp / "lpips_vgg16.safetensors")
  torch.save(vgg_sd, vgg_path)

  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    rc = convert_lpips.main([f"--vgg={vgg_path}", f"--out={out_path}"])   # heads: package default
  assert rc == 0
  model = convert_lpips.load_lpips(out_path)
  graphdef, state = nnx.split(model)

  @jax.jit
  def dist(state, x, y):
    m = nnx.merge(graphdef, state)
    return m(x, y), m.per_layer(x, y)

  @jax.jit
  def grad_x(state, x, y):
    return jax.grad(lambda x: nnx.merge(graphdef, state)(x, y).sum())(x)

  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (B, HW, HW, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  y[1] = rng.uniform(-1, 1, (HW, HW, 3))              # pair 1: unrelated images
  return types.SimpleNamespace(ref=ref, features=features, vgg_path=vgg_path, out_path=out_path,
                               summary=stdout.getvalue(), model=model, state=state, dist=dist,
                               grad_x=grad_x, x=x, y=y)


def torch_variant(env, x, y, taps=TAPS, scaling=True, normalise=True):
  """lpips v0.1 re-assembled from the reference's own modules, with optional deliberate faults."""
  def run(img):
    h = env.ref.scaling_layer(img) if scaling else img
    outs = []
    for i, m in enumerate(env.features[:max(taps) + 1]):
      h = m(h)
      if i in taps:
        outs.append(h.clone())        # the next in-place ReLU must not change a tap
    return outs

  total = 0
  for k, (a, b) in enumerate(zip(run(x), run(y))):
    if normalise:
      a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
      b = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
    total = total + env.ref.lins[k]((a - b) ** 2).mean([2, 3], keepdim=True)
  return total.reshape(-1)


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
def test_converter_cli_summary(env):
  assert env.summary.startswith("lpips_vgg16: 31 tensors, 14,716,160 parameters"), env.summary
  assert "lpips 0.1.4 heads" in env.summary, env.summary
  assert env.summary.count("\n") == 1


def test_distance_parity(env):
  with torch.no_grad():
    ref_val, ref_layers = env.ref(_nchw(env.x), _nchw(env.y), retPerLayer=True)
  ours, ours_layers = env.dist(env.state, env.x, env.y)
  assert ours.shape == (B,) and ours.dtype == jnp.float32
  err = _rel_err(ours, ref_val.reshape(-1).numpy())
  print(f"[lpips] distance {np.asarray(ours)} vs {ref_val.reshape(-1).numpy()}: rel err {err:.2e}")
  assert err <= DIST_TOL, err
  for k, (a, r) in enumerate(zip(ours_layers, ref_layers)):
    e = _rel_err(a, r.reshape(-1).numpy())
    print(f"[lpips] layer {k} ({lpips_model.TAP_NAMES[k]}): rel err {e:.2e}")
    assert e <= DIST_TOL, (k, e)


def test_gradient_parity(env):
  xt = _nchw(env.x).requires_grad_(True)
  env.ref(xt, _nchw(env.y)).sum().backward()
  ref_grad = xt.grad.numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(env.grad_x(env.state, env.x, env.y))
  err = _rel_err(ours, ref_grad)
  print(f"[lpips] d/dx: rel err {err:.2e} (max |ref| {np.max(np.abs(ref_grad)):.2e})")
  assert np.all(np.isfinite(ours)) and err <= GRAD_TOL, err


def test_identical_images_give_zero(env):
  d, _ = env.dist(env.state, env.x, env.x)
  assert np.all(np.asarray(d) == 0.0), np.asarray(d)
  g = np.asarray(env.grad_x(env.state, env.x, env.x))
  assert np.all(g == 0.0), np.max(np.abs(g))
  with torch.no_grad():
    assert np.all(env.ref(_nchw(env.x), _nchw(env.x)).numpy() == 0.0)


def test_negative_controls(env):
  xt, yt = _nchw(env.x), _nchw(env.y)
  ours = np.asarray(env.dist(env.state, env.x, env.y)[0])
  with torch.no_grad():
    ref = env.ref(xt, yt).reshape(-1).numpy()
    # The re-assembled reference is right when unfaulted, so the faults below are the only change.
    assert _rel_err(torch_variant(env, xt, yt).numpy(), ref) <= 1e-6
    faults = {
        "no scaling layer": dict(scaling=False),
        "taps after the max pools": dict(taps=(4, 9, 16, 23, 30)),
        "no channel normalisation": dict(normalise=False),
    }
    for what, kw in faults.items():
      err = _rel_err(ours, torch_variant(env, xt, yt, **kw).numpy())
      print(f"[lpips] negative control '{what}': rel diff {err:.2e}")
      assert err > 100 * DIST_TOL, f"negative control '{what}' not detected ({err:.2e})"


def test_unit_channels_matches_formula_and_has_finite_gradient():
  rng = np.random.default_rng(1)
  f = np.maximum(rng.standard_normal((2, 5, 5, 16)), 0).astype(np.float32)
  f[0, 0, 0] = 0.0                     # an all-zero pixel (sqrt'(0) = inf in the plain formula)
  f[0, 0, 1] = 0.0
  f[0, 0, 1, 3] = 1e-30                # squared norm underflows in float32
  want = f / (np.sqrt(np.sum(f.astype(np.float32) ** 2, -1, keepdims=True)) + np.float32(1e-10))
  got = np.asarray(jax.jit(lpips_model.unit_channels)(f))
  np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=0)
  assert np.all(got[0, 0, 0] == 0) and got[0, 0, 1, 3] == np.float32(1e-30) / np.float32(1e-10)
  w = rng.standard_normal(f.shape).astype(np.float32)
  g = jax.jit(jax.grad(lambda f: jnp.sum(lpips_model.unit_channels(f) * w)))(f)
  assert np.all(np.isfinite(np.asarray(g)))


def test_parameters_and_logical_axes(env):
  flat = weight_files.flatten_module(env.model)
  assert len(flat) == 31 and sum(v.size for v in flat.values()) == 14_716_160
  names = {".".join(map(str, p)): v.get_metadata().get("out_sharding")
           for p, v in nnx.to_flat_state(nnx.state(env.model, nnx.Param))}
  assert names["convs.0.kernel"] == (None, None, "conv_in", "conv_out")
  assert names["convs.12.bias"] == ("conv_out",)
  assert names["heads.4.kernel"] == (None, None, "conv_in", None)
  # trunk weights land transposed to HWIO
  w = np.asarray(env.model.convs[4].kernel[...])                    # torchvision features.10
  np.testing.assert_array_equal(w, env.features[10].weight.detach().numpy().transpose(2, 3, 1, 0))


def test_converter_is_strict(env, tmp_path):
  vgg = weight_files.read_torch_state_dict(env.vgg_path)
  heads = weight_files.read_torch_state_dict(convert_lpips.default_heads_path())
  assert len(convert_lpips.convert(vgg, heads)) == 31          # classifier.* ignored

  def fails(vgg_sd, heads_sd, *needles):
    with pytest.raises(CheckpointError) as e:
      convert_lpips.convert(vgg_sd, heads_sd)
    for n in needles:
      assert n in str(e.value), (n, str(e.value))

  fails({k: v for k, v in vgg.items() if k != "features.28.bias"}, heads,
        "missing", "features.28.bias")
  fails({**vgg, "features.0.weight": vgg["features.0.weight"].transpose(1, 0, 2, 3)}, heads,
        "shape", "features.0.weight", "(3, 64, 3, 3)")
  fails({**vgg, "features.30.weight": np.zeros((1,), np.float32)}, heads,
        "unexpected", "features.30.weight")
  fails(vgg, {k: v for k, v in heads.items() if k != "lin4.model.1.weight"},
        "LPIPS heads", "lin4.model.1.weight")

  # our converted file: a missing parameter or another model's file is refused at load time
  flat, _ = weight_files.load_flat(env.out_path)
  partial = str(tmp_path / "partial.safetensors")
  weight_files.save_flat(partial, {k: v for k, v in flat.items() if k != "heads.2.kernel"},
                         metadata={"model": "lpips_vgg16"})
  with pytest.raises(CheckpointError, match=r"heads\.2\.kernel"):
    convert_lpips.load_lpips(partial)
  other = str(tmp_path / "other.safetensors")
  weight_files.save_flat(other, flat, metadata={"model": "something_else"})
  with pytest.raises(CheckpointError, match="lpips_vgg16"):
    convert_lpips.load_lpips(other)

  # the CLI reports a user error in one line and a non-zero status
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = convert_lpips.main([f"--vgg={tmp_path / 'absent.pth'}", f"--out={tmp_path / 'x.st'}"])
  assert rc == 1 and "absent.pth" in err.getvalue() and err.getvalue().count("\n") == 1


def test_default_heads_path(monkeypatch):
  path = convert_lpips.default_heads_path()
  assert path.endswith(os.path.join("lpips", "weights", "v0.1", "vgg.pth")), path
  with open(path, "rb") as f:
    assert hashlib.md5(f.read()).hexdigest() == HEADS_MD5 == convert_lpips.HEADS_MD5
  heads = weight_files.read_torch_state_dict(path)
  assert {k: v.shape for k, v in heads.items()} == {
      f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(lpips_model.TAP_CHANNELS)}
  assert all(np.all(v >= 0) for v in heads.values())          # documented: all weights >= 0

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "lpips" else real(name, *a))
  with pytest.raises(CheckpointError, match=r"pip install --no-deps lpips==0\.1\.4"):
    convert_lpips.default_heads_path()
