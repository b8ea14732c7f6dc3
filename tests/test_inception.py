"""Parity of our FID InceptionV3 with a PyTorch reference of pytorch-fid's network, random weights.

Why a reference written here: pytorch-fid imports torchvision, which cannot be installed beside
this torch build, and its weight file is not downloaded in tests. `TorchFIDInception` below is
written from docs/checkpoint_layouts.md section 5 with plain torch ops: torchvision
Inception3 module names (so its state dict has the real file's keys), BasicConv = Conv2d(bias=False)
+ BatchNorm2d(eps=0.001) + ReLU, the FID pool variants (F.avg_pool2d(count_include_pad=False) in
A / C / E_1, F.max_pool2d 3/1/1 in E_2), and pytorch-fid's wrapper input handling ([0, 1] images,
F.interpolate bilinear align_corners=False to 299, then 2x - 1). Its key count (566, 472 without
num_batches_tracked) and parameter count (23,850,960 trainable; 23,885,392 with running stats,
the layouts' "23.89M") are checked against the documented numbers, which guards the reference's
structure independently of our port.

Weights: normal with std 1/sqrt(fan_in) (activations stay O(1) through 94 convs), BatchNorm
affine and running statistics randomised so that a swapped or dropped BN tensor shows. The state
dict goes through our CLI (.pth -> .safetensors) and `load`, so the key mapping is covered too.

Tolerances (max abs err / max |ref|, float32 on both sides): pool3 features and logits 1e-4;
bilinear resize 1e-6. Negative controls (torchvision's count_include_pad=True average pools; an
average pool in Mixed_7c) must differ from our output by more than 10x the feature tolerance.
Inputs are 2 images of 64 x 64 (resized to 299 inside either way).
"""

import contextlib
import io
import time
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import gigatok_jax.parallel  # noqa: E402,F401  (same import order as the other parity tests)
from gigatok_jax.convert import inception as convert_inception  # noqa: E402
from gigatok_jax.convert import weight_files  # noqa: E402
from gigatok_jax.errors import CheckpointError  # noqa: E402
from gigatok_jax.models import inception as inception_model  # noqa: E402

torch.set_num_threads(2)

FEAT_TOL = 1e-4
RESIZE_TOL = 1e-6
B, HW = 2, 64
N_TRAINABLE = 23_850_960          # conv + BN affine + fc (torch `parameters()`)
N_WITH_STATS = 23_885_392         # + BN running mean / var: the layouts' "23.89M"


# ------------------------------------------------------------------------------------------------
# PyTorch reference (test only)
# ------------------------------------------------------------------------------------------------
class TBasicConv(nn.Module):
  def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def t_avg_pool(x, include_pad=False):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=include_pad)


class TA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TBasicConv(cin, 64, 1)
    self.branch5x5_1 = TBasicConv(cin, 48, 1)
    self.branch5x5_2 = TBasicConv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = TBasicConv(cin, 64, 1)
    self.branch3x3dbl_2 = TBasicConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TBasicConv(96, 96, 3, padding=1)
    self.branch_pool = TBasicConv(cin, pool_features, 1)
    self.include_pad = False

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(t_avg_pool(x, self.include_pad))], 1)


class TB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TBasicConv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = TBasicConv(cin, 64, 1)
    self.branch3x3dbl_2 = TBasicConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TBasicConv(96, 96, 3, stride=2)

  def forward(self, x):
    return torch.cat([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, 3, stride=2)], 1)


class TC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TBasicConv(cin, 192, 1)
    self.branch7x7_1 = TBasicConv(cin, c7, 1)
    self.branch7x7_2 = TBasicConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = TBasicConv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TBasicConv(cin, c7, 1)
    self.branch7x7dbl_2 = TBasicConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TBasicConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TBasicConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TBasicConv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = TBasicConv(cin, 192, 1)
    self.include_pad = False

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(
        self.branch7x7dbl_2(self.branch7x7dbl_1(x)))))
    return torch.cat([self.branch1x1(x), b7, bd,
                      self.branch_pool(t_avg_pool(x, self.include_pad))], 1)


class TD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TBasicConv(cin, 192, 1)
    self.branch3x3_2 = TBasicConv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = TBasicConv(cin, 192, 1)
    self.branch7x7x3_2 = TBasicConv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TBasicConv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TBasicConv(192, 192, 3, stride=2)

  def forward(self, x):
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                      F.max_pool2d(x, 3, stride=2)], 1)


class TE(nn.Module):
  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = TBasicConv(cin, 320, 1)
    self.branch3x3_1 = TBasicConv(cin, 384, 1)
    self.branch3x3_2a = TBasicConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = TBasicConv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TBasicConv(cin, 448, 1)
    self.branch3x3dbl_2 = TBasicConv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = TBasicConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TBasicConv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = TBasicConv(cin, 192, 1)
    self.pool = pool              # "avg" (FIDInceptionE_1) or "max" (FIDInceptionE_2)
    self.include_pad = False

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    if self.pool == "avg":
      bp = t_avg_pool(x, self.include_pad)
    else:
      bp = F.max_pool2d(x, 3, stride=1, padding=1)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(bp)], 1)


class TorchFIDInception(nn.Module):
  """pytorch-fid's FID InceptionV3 with its wrapper: [0, 1] NCHW images -> (pool3, logits)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TBasicConv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = TBasicConv(32, 32, 3)
    self.Conv2d_2b_3x3 = TBasicConv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = TBasicConv(64, 80, 1)
    self.Conv2d_4a_3x3 = TBasicConv(80, 192, 3)
    self.Mixed_5b = TA(192, 32)
    self.Mixed_5c = TA(256, 64)
    self.Mixed_5d = TA(288, 64)
    self.Mixed_6a = TB(288)
    self.Mixed_6b = TC(768, 128)
    self.Mixed_6c = TC(768, 160)
    self.Mixed_6d = TC(768, 160)
    self.Mixed_6e = TC(768, 192)
    self.Mixed_7a = TD(768)
    self.Mixed_7b = TE(1280, "avg")
    self.Mixed_7c = TE(2048, "max")
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x01):
    x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool = x.mean((2, 3))                                       # adaptive avg pool to 1x1
    return pool, self.fc(pool)


def _randomise(model: nn.Module, seed: int = 0) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(1.0 + 0.3 * torch.randn(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        m.num_batches_tracked.fill_(7)
      elif isinstance(m, nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        m.bias.copy_(0.1 * torch.randn(m.out_features, generator=g))
  model.eval()


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
  """Random reference, its state dict as a .pth, our CLI-converted and loaded model, images."""
  tmp = tmp_path_factory.mktemp("inception")
  ref = TorchFIDInception()
  _randomise(ref)
  pth, out = str(tmp / "pt_inception-random.pth"), str(tmp / "fid_inception.safetensors")
  torch.save(ref.state_dict(), pth)
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    rc = convert_inception.main([f"--weights={pth}", f"--out={out}"])
  assert rc == 0
  model = convert_inception.load(out)
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, images):
    return nnx.merge(graphdef, state)(images)

  rng = np.random.default_rng(0)
  x01 = rng.uniform(0, 1, (B, HW, HW, 3)).astype(np.float32)
  return types.SimpleNamespace(ref=ref, pth=pth, out=out, summary=stdout.getvalue(), model=model,
                               state=state, forward=forward, x01=x01)


@pytest.fixture(scope="module")
def outputs(env):
  """(ours, reference) pool3 and logits for the test images, each computed once."""
  t0 = time.perf_counter()
  ours = env.forward(env.state, jnp.asarray(2 * env.x01 - 1))
  ours = jax.tree.map(np.asarray, ours)
  t1 = time.perf_counter()
  with torch.no_grad():
    ref_pool, ref_logits = env.ref(_nchw(env.x01))
  t2 = time.perf_counter()
  print(f"[inception] ours (jit + run) {t1 - t0:.1f}s, torch {t2 - t1:.1f}s")
  return ours, (ref_pool.numpy(), ref_logits.numpy())


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
def test_reference_matches_documented_layout(env):
  sd = env.ref.state_dict()
  assert len(sd) == 566
  assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 472
  assert sum(p.numel() for p in env.ref.parameters()) == N_TRAINABLE
  assert sum(v.numel() for k, v in sd.items()
             if not k.endswith("num_batches_tracked")) == N_WITH_STATS
  assert tuple(sd["fc.weight"].shape) == (1008, 2048)
  assert tuple(sd["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)


def test_converter_cli_summary(env):
  assert env.summary.startswith(
      f"fid_inception_v3: 472 tensors, {N_TRAINABLE:,} parameters + "
      f"{N_WITH_STATS - N_TRAINABLE:,} BatchNorm running statistics"), env.summary
  assert env.summary.count("\n") == 1


def test_parameter_count_and_names(env):
  flat = weight_files.flatten_module(env.model)
  assert len(flat) == 472
  assert sum(v.size for v in flat.values()) == N_WITH_STATS
  assert sum(v.size for k, v in flat.items()
             if not k.endswith((".bn.mean", ".bn.var"))) == N_TRAINABLE
  # the expected torch keys are exactly the reference's keys (minus num_batches_tracked)
  sd = env.ref.state_dict()
  assert convert_inception.expected_torch_shapes() == {
      k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  axes = {".".join(map(str, p)): v.get_metadata().get("out_sharding")
          for p, v in nnx.to_flat_state(nnx.state(env.model, nnx.Param))}
  assert axes["Mixed_7c.branch3x3_2b.conv.kernel"] == (None, None, "conv_in", "conv_out")
  assert axes["Mixed_5b.branch_pool.bn.var"] == ("norm",)
  assert axes["fc.kernel"] == ("conv_in", "conv_out")
  # layouts: HWIO kernels (asymmetric ones included), transposed fc, renamed BN statistics
  w = sd["Mixed_6b.branch7x7_2.conv.weight"].numpy()                     # (128, 128, 1, 7)
  np.testing.assert_array_equal(flat["Mixed_6b.branch7x7_2.conv.kernel"], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["fc.kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(flat["Mixed_7a.branch7x7x3_3.bn.var"],
                                sd["Mixed_7a.branch7x7x3_3.bn.running_var"].numpy())


def test_feature_and_logit_parity(outputs):
  (pool, logits), (ref_pool, ref_logits) = outputs
  assert pool.shape == (B, 2048) and pool.dtype == np.float32
  assert logits.shape == (B, 1008) and logits.dtype == np.float32
  assert np.std(ref_pool) > 0.05 and np.max(np.abs(ref_pool)) < 1e3   # O(1), not degenerate
  e_pool, e_logits = _rel_err(pool, ref_pool), _rel_err(logits, ref_logits)
  print(f"[inception] pool3 rel err {e_pool:.2e} (max |ref| {np.max(np.abs(ref_pool)):.2f}), "
        f"logits rel err {e_logits:.2e} (max |ref| {np.max(np.abs(ref_logits)):.2f})")
  assert e_pool <= FEAT_TOL, e_pool
  assert e_logits <= FEAT_TOL, e_logits


def test_negative_controls(env, outputs):
  """torchvision's own pools (count_include_pad=True; average pool in Mixed_7c) must be seen."""
  (pool, _), _ = outputs
  x = _nchw(env.x01)
  faults = {
      "count_include_pad=True": [(m, "include_pad", True) for m in env.ref.modules()
                                 if hasattr(m, "include_pad")],
      "average pool in Mixed_7c": [(env.ref.Mixed_7c, "pool", "avg")],
  }
  for what, changes in faults.items():
    saved = [(m, a, getattr(m, a)) for m, a, _ in changes]
    try:
      for m, a, v in changes:
        setattr(m, a, v)
      with torch.no_grad():
        faulty, _ = env.ref(x)
    finally:
      for m, a, v in saved:
        setattr(m, a, v)
    err = _rel_err(pool, faulty.numpy())
    print(f"[inception] negative control '{what}': rel diff {err:.2e}")
    assert err > 10 * FEAT_TOL, f"negative control '{what}' not detected ({err:.2e})"


@pytest.mark.parametrize("size", [256, 512, 299])
def test_resize_parity(size):
  rng = np.random.default_rng(size)
  x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(inception_model.resize_bilinear)(x))
  ref = F.interpolate(_nchw(x), size=(299, 299), mode="bilinear", align_corners=False)
  ref = ref.numpy().transpose(0, 2, 3, 1)
  err = _rel_err(ours, ref)
  print(f"[inception] resize {size} -> 299: rel err {err:.2e}")
  assert ours.shape == (2, 299, 299, 3) and err <= RESIZE_TOL, err


def test_pools_match_torch():
  """The three pool kinds on an odd-sized map (border windows of every kind)."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 9, 8, 5)).astype(np.float32)
  xt = _nchw(x)
  cases = [
      (inception_model.avg_pool_3x3_exclude_pad, t_avg_pool(xt, False)),
      (inception_model.max_pool_3x3_same, F.max_pool2d(xt, 3, stride=1, padding=1)),
      (inception_model.max_pool_3x3_s2, F.max_pool2d(xt, 3, stride=2)),
  ]
  for fn, ref in cases:
    np.testing.assert_allclose(np.asarray(fn(x)), ref.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-6, atol=1e-6)


def test_converter_is_strict(env):
  sd = weight_files.read_torch_state_dict(env.pth)
  assert any(k.endswith("num_batches_tracked") for k in sd)        # present, and ignored
  assert len(convert_inception.convert(sd)) == 472
  no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert len(convert_inception.convert(no_counters)) == 472       # absent is fine too

  def fails(bad_sd, *needles):
    with pytest.raises(CheckpointError) as e:
      convert_inception.convert(bad_sd)
    for n in needles:
      assert n in str(e.value), (n, str(e.value))

  fails({k: v for k, v in sd.items() if k != "Mixed_7c.branch3x3dbl_3b.bn.running_var"},
        "missing", "Mixed_7c.branch3x3dbl_3b.bn.running_var")
  fails({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)},
        "unexpected", "AuxLogits.fc.weight")
  fails({**sd, "Mixed_9z.bn.num_batches_tracked": np.zeros((), np.int64)},
        "unexpected", "Mixed_9z.bn.num_batches_tracked")
  w = sd["Mixed_6c.branch7x7dbl_2.conv.weight"]                  # (160, 160, 7, 1)
  fails({**sd, "Mixed_6c.branch7x7dbl_2.conv.weight": w.transpose(0, 1, 3, 2)},
        "shape", "Mixed_6c.branch7x7dbl_2.conv.weight", "(160, 160, 7, 1)")


def test_load_rejects_other_files(env, tmp_path):
  flat, _ = weight_files.load_flat(env.out)
  other = str(tmp_path / "other.safetensors")
  weight_files.save_flat(other, flat, metadata={"model": "lpips_vgg16"})
  with pytest.raises(CheckpointError, match="expected 'fid_inception_v3'"):
    convert_inception.load(other)
  partial = str(tmp_path / "partial.safetensors")
  weight_files.save_flat(partial, {k: v for k, v in flat.items() if k != "fc.bias"},
                         metadata={"model": "fid_inception_v3"})
  with pytest.raises(CheckpointError, match="fc.bias"):
    convert_inception.load(partial)
