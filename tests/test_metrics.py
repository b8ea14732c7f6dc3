"""Evaluation statistics (metrics/): streaming covariance, Frechet distance, IS, precision/recall,
reference batches, PSNR/SSIM. Everything is checked against an independent computation (numpy,
scipy sqrtm, skimage)."""

import hashlib
import json

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.distance import cdist
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gigatok_jax.metrics import fid
from gigatok_jax.metrics import image as image_metrics
from gigatok_jax.metrics import inception_score as isc
from gigatok_jax.metrics import precision_recall as prc


def _sqrtm_reference(mu1, sigma1, mu2, sigma2, offset=0.0):
  """The textbook formula with scipy's general matrix square root (optionally with offset * I added)."""
  eye = np.eye(len(mu1)) * offset
  covmean = linalg.sqrtm((sigma1 + eye) @ (sigma2 + eye))
  assert np.abs(np.imag(covmean)).max() < 1e-3
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))


def _random_stats(rng, n, d, shift=0.0):
  return fid.stats_from_features(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift)


# ---------------------------------------------------------------------------------------------- mean/covariance


def test_feature_stats_streams_to_np_cov():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(257, 12)) * rng.uniform(0.1, 3, 12) + 1e4  # large mean: cancellation-prone
  stats = fid.FeatureStats()
  for chunk in np.split(feats, [1, 50, 51, 200]):  # uneven batches, including single rows
    stats.update(chunk)
  assert stats.count == 257
  np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
  left, right = fid.FeatureStats().update(feats[:100]), fid.FeatureStats().update(feats[100:])
  np.testing.assert_allclose(left.merge(right).sigma, stats.sigma, rtol=1e-9, atol=1e-9)
  with pytest.raises(ValueError, match="dimension"):
    stats.update(np.zeros((2, 5)))


# ----------------------------------------------------------------------------------------------- Frechet distance


def test_frechet_matches_scipy_sqrtm_on_well_conditioned_stats():
  rng = np.random.default_rng(1)
  mu1, sigma1 = _random_stats(rng, 500, 32)
  mu2, sigma2 = _random_stats(rng, 500, 32, shift=0.5)
  reference = _sqrtm_reference(mu1, sigma1, mu2, sigma2)
  assert reference > 1.0
  assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(reference, rel=1e-6)
  assert fid.frechet_distance(mu1, sigma1, mu2, sigma2, method="sqrtm") == pytest.approx(reference, rel=1e-9)
  assert fid.trace_sqrt_product(sigma1, sigma2) == pytest.approx(fid.trace_sqrt_product(sigma2, sigma1), rel=1e-9)


def test_frechet_near_singular_covariances():
  rng = np.random.default_rng(2)
  mu1, sigma1 = fid.stats_from_features(rng.normal(size=(20, 64)))  # rank 19 in 64 dims
  mu2, sigma2 = fid.stats_from_features(rng.normal(size=(20, 64)) + 0.3)
  assert np.linalg.matrix_rank(sigma1) == 19
  value = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert np.isfinite(value) and value >= 0
  # The eps-offset fallback of the ADM evaluator perturbs the answer by O(sqrt(eps)) per null direction ...
  eps = 1e-6
  assert value == pytest.approx(_sqrtm_reference(mu1, sigma1, mu2, sigma2, offset=eps), rel=1e-4)
  # ... and on the offset matrices themselves (now full rank) the two square roots agree tightly.
  offset = np.eye(64) * eps
  assert fid.frechet_distance(mu1, sigma1 + offset, mu2, sigma2 + offset) == pytest.approx(
      _sqrtm_reference(mu1, sigma1 + offset, mu2, sigma2 + offset), rel=1e-6)
  # Exactly singular (zero feature columns): still finite and non-negative.
  feats = np.concatenate([rng.normal(size=(50, 8)), np.zeros((50, 8))], axis=1)
  mu3, sigma3 = fid.stats_from_features(feats)
  assert 0 <= fid.frechet_distance(mu3, sigma3, mu3, sigma3) < 1e-8


def test_frechet_of_a_set_with_itself_is_zero_and_against_noise_large():
  rng = np.random.default_rng(3)
  feats = np.abs(rng.normal(size=(300, 48))) @ rng.uniform(size=(48, 48))  # non-negative, correlated
  mu, sigma = fid.stats_from_features(feats)
  assert 0 <= fid.frechet_distance(mu, sigma, mu, sigma) < 1e-8
  # Two halves of the same distribution: small; uniform noise features: large.
  half = fid.frechet_distance(*fid.stats_from_features(feats[:150]), *fid.stats_from_features(feats[150:]))
  noise = fid.frechet_distance(mu, sigma, *fid.stats_from_features(rng.uniform(-50, 50, size=(300, 48))))
  assert noise > 100 * half


def test_frechet_rejects_bad_inputs():
  mu, sigma = np.zeros(4), np.eye(4)
  with pytest.raises(ValueError, match="positive semi-definite"):
    fid.frechet_distance(mu, sigma, mu, -np.eye(4))
  with pytest.raises(ValueError, match="sigma1 is not positive"):
    fid.frechet_distance(mu, -np.eye(4), mu, sigma)
  with pytest.raises(ValueError, match="mismatched"):
    fid.frechet_distance(mu, sigma, np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="method"):
    fid.frechet_distance(mu, sigma, mu, sigma, method="svd")


# ------------------------------------------------------------------------------------------------ Inception Score


def test_inception_score_extremes():
  uniform = np.zeros((100, 10))
  for protocol in ("adm", "pytorch_fid"):
    assert isc.inception_score(uniform, protocol)["inception_score"] == pytest.approx(1.0, abs=1e-12)
  # Confident logits, every class equally often in each part: IS = number of classes.
  onehot = np.eye(10)[np.tile(np.arange(10), 20)] * 100.0                 # 200 rows
  adm = isc.inception_score(onehot, "adm", split_size=20)
  assert adm["inception_score"] == pytest.approx(10.0, rel=1e-9) and adm["inception_score_parts"] == 10
  assert adm["inception_score_std"] == pytest.approx(0.0, abs=1e-9)
  # Logits 1e4 apart: probabilities underflow to exactly 0 and contribute their limit, not NaN.
  assert isc.inception_score(onehot * 100.0, "adm", split_size=20)["inception_score"] == pytest.approx(10.0)
  with pytest.raises(ValueError, match="protocol"):
    isc.inception_score(onehot, "tf")
  with pytest.raises(ValueError, match="at least 10"):
    isc.inception_score(onehot[:9], "pytorch_fid")


def test_adm_parts_are_contiguous_with_a_short_last_part():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(23, 7)) * 2
  parts = isc.adm_parts(logits, split_size=10)
  assert parts == [isc.part_score(logits[:10]), isc.part_score(logits[10:20]),
                   isc.part_score(logits[20:])]


# ---------------------------------------------------------------------------------------------- precision/recall


@pytest.mark.parametrize("arithmetic", ["float32", "adm"])
def test_manifold_radii_match_brute_force_across_blocks(arithmetic):
  rng = np.random.default_rng(5)
  feats = np.round(rng.normal(size=(103, 6)) * 4) / 4     # float16-exact, small norms: no rounding
  brute = np.sort(cdist(feats, feats, "sqeuclidean"), axis=1)[:, 3]  # column 0 is the point itself
  np.testing.assert_allclose(prc.manifold_radii(feats, k=3, arithmetic=arithmetic, block_size=17),
                             brute, rtol=1e-3 if arithmetic == "adm" else 1e-5, atol=1e-5)


def test_adm_distances_fall_back_to_float32_per_block_on_overflow():
  rng = np.random.default_rng(7)
  small = rng.normal(size=(5, 8)).astype(np.float32)
  d = prc.distances_adm(small, small)
  assert d.dtype == np.float32 and np.all(d == d.astype(np.float16))      # the float16 path
  big = small * 200.0                                                     # |x|^2 > 65504: overflow
  np.testing.assert_array_equal(prc.distances_adm(big, big), prc.distances_float32(big, big))


@pytest.mark.parametrize("arithmetic", ["float32", "adm"])
def test_precision_recall_identical_disjoint_and_subset(arithmetic):
  rng = np.random.default_rng(6)
  cluster_a = rng.normal(size=(120, 16))
  cluster_b = rng.normal(size=(120, 16)) + 10.0
  for block_size in (5000, 29):  # one block, and many uneven blocks
    pr = lambda r, s: prc.precision_recall(r, s, arithmetic=arithmetic, block_size=block_size)  # noqa: E731
    assert pr(cluster_a, cluster_a) == (1.0, 1.0)
    assert pr(cluster_a, cluster_b) == (0.0, 0.0)
    # Samples cover only half of the reference: every sample is realistic (precision 1), half the
    # reference is missed (recall 0.5). Swapped roles swap the two numbers.
    reference = np.concatenate([cluster_a, cluster_b])
    assert pr(reference, cluster_a) == (1.0, 0.5)
    assert pr(cluster_a, reference) == (0.5, 1.0)


# ------------------------------------------------------------------------------------ reference batches and sha256


def test_reference_roundtrip_streaming_and_sha256(tmp_path):
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, size=(11, 8, 8, 3), dtype=np.uint8)
  mu, sigma = fid.stats_from_features(rng.normal(size=(30, 5)))
  path = str(tmp_path / "ref_batch")  # no .npz suffix: written exactly there
  digest = fid.write_reference(path, mu=mu, sigma=sigma, images=images, mu_s=mu[:3], sigma_s=sigma[:3, :3])
  with open(path, "rb") as f:
    assert digest == hashlib.sha256(f.read()).hexdigest()
  ref = fid.read_reference(path)
  assert ref["sha256"] == digest and ref["num_images"] == 11 and "arr_0" not in ref
  np.testing.assert_array_equal(ref["sigma"], sigma)
  np.testing.assert_array_equal(ref["mu_s"], mu[:3])
  np.testing.assert_array_equal(fid.read_reference(path, load_images=True)["arr_0"], images)
  batches = list(fid.iter_reference_images(path, batch_size=4))
  assert [len(b) for b in batches] == [4, 4, 3]
  np.testing.assert_array_equal(np.concatenate(batches), images)
  # A result records every reference it was computed against, with the hash.
  out = tmp_path / "result.json"
  fid.write_result_json(str(out), {"fid": np.float64(1.5)}, [ref])
  record = json.loads(out.read_text())
  assert record == {"metrics": {"fid": 1.5}, "references": [{"path": ref["path"], "sha256": digest}]}


def test_reference_without_stats_is_a_clear_error(tmp_path):
  samples = str(tmp_path / "samples.npz")
  np.savez(samples, arr_0=np.zeros((2, 4, 4, 3), np.uint8))  # a samples file, not a reference batch
  with pytest.raises(ValueError, match=r"samples\.npz.*'mu'"):
    fid.read_reference(samples)
  half = str(tmp_path / "half.npz")
  np.savez(half, mu=np.zeros(2), sigma=np.eye(2), mu_s=np.zeros(2))
  with pytest.raises(ValueError, match=r"half\.npz.*'sigma_s'"):
    fid.read_reference(half)


# ---------------------------------------------------------------------------------------------------- PSNR / SSIM


def _image_pair(seed=8, shape=(3, 32, 40, 3)):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, size=shape, dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-40, 41, size=shape), 0, 255).astype(np.uint8)
  return a, b


def test_psnr_matches_skimage_and_caps_identical_images():
  a, b = _image_pair()
  expected = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)]
  np.testing.assert_allclose(image_metrics.psnr(a, b), expected, rtol=1e-12)
  assert image_metrics.psnr(a, a).tolist() == [image_metrics.PSNR_CAP_DB] * 3
  assert image_metrics.PSNR_CAP_DB == pytest.approx(148.1308, abs=1e-4)
  # [-1, 1] floats are quantised to the same uint8 images first.
  as_float = a.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_array_equal(image_metrics.psnr(as_float, b), image_metrics.psnr(a, b))


def test_ssim_matches_skimage():
  a, b = _image_pair()
  gaussian = [structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255) for x, y in zip(a, b)]
  np.testing.assert_allclose(image_metrics.ssim(a, b), gaussian, atol=1e-6)
  uniform = [structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]
  np.testing.assert_allclose(image_metrics.ssim(a, b, gaussian_weights=False), uniform, atol=1e-6)
  np.testing.assert_allclose(image_metrics.ssim(a, a), 1.0, atol=1e-12)
  np.testing.assert_allclose(image_metrics.ssim(a[0], b[0]), gaussian[:1], atol=1e-6)  # a single HWC image


def test_data_parallel_networks_split_the_batch_over_every_device():
  """evaluate/sharded.py: host batches in, host outputs out, the batch split over all devices
  (8 here), padding for sizes the device count does not divide."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from gigatok_jax.metrics import sharded
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
  rng = np.random.default_rng(0)
  w = rng.standard_normal((5, 3)).astype(np.float32)
  run = sharded.data_parallel(lambda p, x, y: ((x @ p["w"]) * y[:, None], x.sum(-1)), {"w": w},
                              mesh)
  for n in (16, 13, 1):
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.standard_normal((n,)).astype(np.float32)
    out, total = run(x, y)
    np.testing.assert_allclose(out, (x @ w) * y[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, x.sum(-1), rtol=1e-5, atol=1e-6)
    assert out.shape == (n, 3) and isinstance(out, np.ndarray)
  g = sharded._global(np.arange(32.0).reshape(16, 2), NamedSharding(mesh, P(("a", "b"))))
  assert len(g.addressable_shards) == 8
  assert {s.data.shape for s in g.addressable_shards} == {(2, 2)}
