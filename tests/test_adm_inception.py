"""Both evaluation protocols' Inception measurements against torch-fidelity's TF-graph Inception.

Reference: torch-fidelity 0.4.0's `FeatureExtractorInceptionV3` (the package itself, installed as
a test dependency), which reproduces the TF graph ADM's numbers come from: TF-1 bilinear resize
of [0, 255] images, (x - 128) / 128, the FID pool variants. Random weights (normal, std
1/sqrt(fan_in); BatchNorm affine and statistics randomised) go into a .pth in the file layout both
torch-fidelity and pytorch-fid use, through our converter CLI into our model.

Substitutions, because torchvision cannot be installed beside this torch build:
  - torch-fidelity's package `__init__` (which imports torchvision through its dataset helpers) is
    bypassed: the package is registered without running it and its modules are imported from the
    installed files unchanged.
  - `mixed_6/conv`, which torch-fidelity does not expose, is read with a forward hook on the module
    its weight map assigns to it, `Mixed_6d.branch1x1`.
  - protocol 'pytorch_fid': pytorch-fid (torchvision-based) cannot be imported, and its network is
    torch-fidelity's trunk with another front end. The test keeps torch-fidelity's trunk and puts
    pytorch-fid's wrapper arithmetic (torch `F.interpolate` bilinear, align_corners=False, of
    x / 255, then 2x - 1) in place of the TF-1 resize, written so that torch-fidelity's own
    (x - 128) / 128 turns it into exactly that input.
Also checked: our TF-1 resize against TensorFlow's `tf.compat.v1.image.resize_bilinear` itself.
Tolerances (max abs error / max |reference|, float32 both sides): features 1e-4; resize 1e-6.
"""

import contextlib
import importlib
import importlib.util
import io
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
assert importlib.util.find_spec("torch_fidelity"), "torch-fidelity is a test dependency (requirements-test.txt)"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gigatok_jax.convert import inception as convert_inception  # noqa: E402
from gigatok_jax.metrics import evaluator  # noqa: E402
from gigatok_jax.models import inception as inception_model  # noqa: E402

torch.set_num_threads(2)
FEAT_TOL = 1e-4


def _torch_fidelity_module(name: str):
  """torch_fidelity.<name> imported from the installed files without running the package
  `__init__` (see the module docstring)."""
  if "torch_fidelity" not in sys.modules or not hasattr(sys.modules["torch_fidelity"], "__path__"):
    spec = importlib.util.find_spec("torch_fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
  return importlib.import_module(f"torch_fidelity.{name}")


def _random_state_dict(seed: int = 0) -> dict:
  g = torch.Generator().manual_seed(seed)
  sd = {}
  for key, shape in convert_inception.expected_torch_shapes().items():
    if key.endswith("conv.weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      sd[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    elif key == "fc.weight":
      sd[key] = torch.randn(shape, generator=g) / shape[1] ** 0.5
    elif key == "fc.bias":
      sd[key] = 0.1 * torch.randn(shape, generator=g)
    elif key.endswith("bn.weight"):
      sd[key] = 1.0 + 0.3 * torch.randn(shape, generator=g)
    elif key.endswith("bn.bias"):
      sd[key] = 0.2 * torch.randn(shape, generator=g)
    elif key.endswith("running_mean"):
      sd[key] = 0.2 * torch.randn(shape, generator=g)
    elif key.endswith("running_var"):
      sd[key] = 0.5 + torch.rand(shape, generator=g)
    else:
      raise AssertionError(key)
  return sd


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("adm_inception")
  pth, out = str(tmp / "weights-inception-random.pth"), str(tmp / "fid_inception.safetensors")
  torch.save(_random_state_dict(), pth)
  with contextlib.redirect_stdout(io.StringIO()):
    assert convert_inception.main([f"--weights={pth}", f"--out={out}"]) == 0
  fe = _torch_fidelity_module("feature_extractor_inceptionv3")
  reference = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=pth)
  captured = {}
  reference.Mixed_6d.branch1x1.register_forward_hook(
      lambda module, args, output: captured.__setitem__("mixed_6/conv", output))
  reference.Conv2d_1a_3x3.register_forward_pre_hook(     # the trunk's input, after the front end
      lambda module, args: captured.__setitem__("input", args[0]))
  from skimage import data  # pylint: disable=import-outside-toplevel
  photos = np.stack([data.astronaut()[::2, ::2], data.chelsea()[:256, 100:356]])  # (2, 256, 256, 3)
  rng = np.random.default_rng(0)
  images = {"256": photos, "64": rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)}
  return types.SimpleNamespace(fe=fe, reference=reference, captured=captured, out=out,
                               images=images)


def _torch_measure(env, images):
  with torch.no_grad():
    pool, logits = env.reference(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  spatial = env.captured["mixed_6/conv"].permute(0, 2, 3, 1)[..., :7]    # NHWC, first 7 channels
  return pool.numpy(), spatial.reshape(len(images), -1).numpy(), logits.numpy()


def _ours(env, images, protocol):
  measure = evaluator.inception_measure(env.out, protocol, batch_size=len(images))
  return measure(images)


@pytest.mark.parametrize("size", ["256", "64"])
def test_adm_protocol_matches_torch_fidelity(env, size):
  images = env.images[size]
  ref_pool, ref_spatial, ref_logits = _torch_measure(env, images)
  trunk_input = env.captured["input"].permute(0, 2, 3, 1).numpy()
  ours_input = np.asarray(inception_model.protocol_inputs(jnp.asarray(images), "adm"))
  assert _rel_err(ours_input, trunk_input) < 1e-6
  ours = _ours(env, images, "adm")
  assert ours.spatial.shape == (2, inception_model.SPATIAL_FEATURES) == ref_spatial.shape
  print(f"[adm {size}] relative error: pool {_rel_err(ours.pool, ref_pool):.1e}, spatial "
        f"{_rel_err(ours.spatial, ref_spatial):.1e}, logits {_rel_err(ours.logits, ref_logits):.1e}")
  assert _rel_err(ours.pool, ref_pool) < FEAT_TOL
  assert _rel_err(ours.spatial, ref_spatial) < FEAT_TOL
  assert _rel_err(ours.logits, ref_logits) < FEAT_TOL


def test_pytorch_fid_protocol_matches_torch_fidelity_trunk_with_pytorch_fid_front(env, monkeypatch):
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  def pytorch_fid_front(x, size, align_corners):   # returns 128 + 128 * (pytorch-fid's input)
    del align_corners
    x = F.interpolate(x / 255.0, size=size, mode="bilinear", align_corners=False)
    return 128.0 + 128.0 * (2.0 * x - 1.0)
  monkeypatch.setattr(env.fe, "interpolate_bilinear_2d_like_tensorflow1x", pytorch_fid_front)
  images = env.images["256"]
  ref_pool, ref_spatial, ref_logits = _torch_measure(env, images)
  ours = _ours(env, images, "pytorch_fid")
  print(f"[pytorch_fid] relative error: pool {_rel_err(ours.pool, ref_pool):.1e}, spatial "
        f"{_rel_err(ours.spatial, ref_spatial):.1e}, logits {_rel_err(ours.logits, ref_logits):.1e}")
  assert _rel_err(ours.pool, ref_pool) < FEAT_TOL
  assert _rel_err(ours.spatial, ref_spatial) < FEAT_TOL
  assert _rel_err(ours.logits, ref_logits) < FEAT_TOL
  # The front ends: ours equal the reference's trunk input, and the two protocols' inputs differ
  # (half a source pixel of shift and another scale; random weights blur this in the features).
  trunk_input = env.captured["input"].permute(0, 2, 3, 1).numpy()
  ours_input = np.asarray(inception_model.protocol_inputs(jnp.asarray(images), "pytorch_fid"))
  assert _rel_err(ours_input, trunk_input) < 1e-5
  adm_input = np.asarray(inception_model.protocol_inputs(jnp.asarray(images), "adm"))
  assert _rel_err(adm_input, trunk_input) > 1e-2


@pytest.mark.parametrize("shape", [(256, 256), (64, 48), (37, 300), (299, 299), (512, 512)])
def test_tf1_resize_matches_torch_fidelity_and_tensorflow(shape):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (2,) + shape + (3,)).astype(np.float32)
  ours = np.asarray(jax.jit(inception_model.resize_bilinear_tf1)(jnp.asarray(x)))
  tf_compat = _torch_fidelity_module("interpolate_compat_tensorflow")
  ref = tf_compat.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), align_corners=False)
  assert _rel_err(ours, ref.permute(0, 2, 3, 1).numpy()) < 1e-6
  tf = pytest.importorskip("tensorflow")
  with tf.device("/CPU:0"):
    tf_out = tf.compat.v1.image.resize_bilinear(x, (299, 299), align_corners=False,
                                                half_pixel_centers=False).numpy()
  assert _rel_err(ours, tf_out) < 1e-6


def test_measure_rejects_float_images(env):
  measure = evaluator.inception_measure(env.out, "adm", batch_size=2)
  with pytest.raises(ValueError, match="uint8"):
    measure(env.images["256"].astype(np.float32))
  with pytest.raises(ValueError, match="protocol"):
    inception_model.protocol_inputs(jnp.zeros((1, 8, 8, 3)), "tf")


def test_reference_batch_command_on_the_real_network(env, tmp_path, capsys):
  from gigatok_jax.convert import reference_batch  # pylint: disable=import-outside-toplevel
  from gigatok_jax.metrics import fid  # pylint: disable=import-outside-toplevel
  images = env.images["64"]
  batch = str(tmp_path / "batch.npz")
  np.savez(batch, arr_0=np.concatenate([images, images[::-1, ::-1]]))   # 4 images
  out = str(tmp_path / "ref.npz")
  assert reference_batch.main([f"--images={batch}", f"--inception={env.out}", f"--out={out}",
                               "--batch_size=2"]) == 0
  assert "4 images measured under protocol 'adm'" in capsys.readouterr().out
  ref = fid.read_reference(out)
  measured = _ours(env, np.concatenate([images, images[::-1, ::-1]]), "adm")
  np.testing.assert_allclose(ref["mu"], measured.pool.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ref["mu_s"], measured.spatial.mean(0), rtol=1e-5, atol=1e-6)
  assert ref["sigma_s"].shape == (inception_model.SPATIAL_FEATURES,) * 2


def test_pytorch_fid_protocol_scores_match_torch_fidelity(monkeypatch):
  """Protocol 'pytorch_fid' beyond the features: our Inception Score (seeded shuffle, 10 parts)
  against torch-fidelity's `isc_features_to_metric`, and our float32 precision / recall (k = 3)
  against its `prc_features_to_metric` (torch.cdist + kthvalue), on the same random inputs.

  Substitution: both metric modules import four feature-extraction helpers from
  `torch_fidelity.utils`, which imports torchvision (not installable here). A stand-in module with
  those four names, each raising if called, takes its place while they import; the two functions
  under test call none of them and run from the installed files unchanged."""
  from gigatok_jax.metrics import inception_score, precision_recall

  def unavailable(*args, **kwargs):
    raise AssertionError("torch_fidelity.utils is not importable here (torchvision)")
  utils = types.ModuleType("torch_fidelity.utils")
  for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached",
               "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
    setattr(utils, name, unavailable)
  _torch_fidelity_module("helpers")                       # registers the package without __init__
  monkeypatch.setitem(sys.modules, "torch_fidelity.utils", utils)
  for name in ("metric_isc", "metric_prc"):
    monkeypatch.delitem(sys.modules, f"torch_fidelity.{name}", raising=False)
  isc = _torch_fidelity_module("metric_isc")
  prc = _torch_fidelity_module("metric_prc")
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, (1003, 1008)).astype(np.float32)
  ours = inception_score.inception_score(logits, "pytorch_fid")
  ref = isc.isc_features_to_metric(torch.from_numpy(logits))
  assert ours["inception_score"] == pytest.approx(ref["inception_score_mean"], rel=1e-9)
  assert ours["inception_score_std"] == pytest.approx(ref["inception_score_std"], rel=1e-6)
  # Generated samples shifted and wider than the reference, so both numbers sit inside (0, 1).
  real = rng.normal(0.0, 1.0, (700, 64)).astype(np.float32)
  fake = rng.normal(0.3, 1.15, (650, 64)).astype(np.float32)
  ref = prc.prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real),
                                   prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                   verbose=False)
  precision, recall = precision_recall.precision_recall(real, fake, arithmetic="float32")
  assert 0.05 < ref["precision"] < 0.95 and 0.05 < ref["recall"] < 0.95
  # torch.cdist takes square roots of its own float32 arithmetic: a point within one rounding
  # step of a ball's boundary may fall either way, so allow one point of each set.
  assert precision == pytest.approx(ref["precision"], abs=1.01 / len(fake))
  assert recall == pytest.approx(ref["recall"], abs=1.01 / len(real))


@pytest.mark.slow
def test_eval_mode_on_a_real_layout_inception_file(env, tmp_path):
  """--mode=eval of a tokenizer with the converted (random-weight, real-layout) Inception file:
  every metric of the protocol is a finite number and the JSON names that file by its sha256."""
  import hashlib
  import math
  from helpers import load_recipe, saved_run
  from gigatok_jax.modes import eval_tokenizer
  from gigatok_jax.train.tokenizer import TokenizerTask
  config = load_recipe("demo", "tiny")
  config.mesh.data = 1
  workdir, _ = saved_run(tmp_path, config, TokenizerTask)
  config.eval.update(num_images=6, batch_size=6, inception_path=env.out)
  result = eval_tokenizer.run(config, workdir, progress=False, devices=jax.devices()[:1])
  with open(env.out, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  assert result["inception"]["sha256"] == sha and result["protocol"] == "adm"
  for key in ("rfid", "sfid", "inception_score", "precision", "recall"):
    assert math.isfinite(result[key]), key
