"""FID, IS and precision/recall against outputs of OpenAI's ADM evaluator itself.

tests/fixtures/adm/ holds what guided-diffusion's `evaluations/evaluator.py` (TF 2.21, graph mode)
returned on synthetic feature arrays, with the tolerances its README gives for a correct
float64 re-implementation: FID rtol 1e-6 (identical sets |FID| < 1e-6), mu atol 5e-6, sigma 1e-10,
IS rtol 1e-6, softmax atol 1e-6, precision/recall atol 0.003 on ADM's float16 path and exact on its
float32 path. No Inception weights are involved: every case starts from features. Our P/R follows
ADM's float16 arithmetic (metrics/precision_recall.py), so the test also asserts the closer bound
we measured (<= 0.0005, one point in 2000) and that the float32 path and the fallback are exact.
"""

import os

import numpy as np
import pytest

from gigatok_jax.metrics import fid
from gigatok_jax.metrics import inception_score as isc
from gigatok_jax.metrics import precision_recall as prc

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "adm")


def _load(name):
  with np.load(os.path.join(HERE, name)) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def fid_cases():
  return _load("fid_cases.npz")


@pytest.mark.parametrize("case", ["a", "b", "d"])
def test_fid_statistics_and_distance_match_adm(fid_cases, case):
  f = fid_cases
  x1, x2 = (f[f"{case}_x{i}"].astype(np.float32) for i in (1, 2))
  mu1, sigma1 = fid.stats_from_features(x1)
  mu2, sigma2 = fid.stats_from_features(x2)
  np.testing.assert_allclose(mu1, f[f"{case}_mu1"], atol=5e-6, rtol=0)
  np.testing.assert_allclose(mu2, f[f"{case}_mu2"], atol=5e-6, rtol=0)
  np.testing.assert_allclose(sigma1, f[f"{case}_sigma1"], atol=1e-10, rtol=1e-10)
  np.testing.assert_allclose(sigma2, f[f"{case}_sigma2"], atol=1e-10, rtol=1e-10)
  want = float(f[f"{case}_fid"])
  for method in ("eigh", "sqrtm"):
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2, method=method) == pytest.approx(
        want, rel=1e-6, abs=1e-6)
  # ADM's own statistics in, same distance out (the reference-batch path: stored mu / sigma).
  got = fid.frechet_distance(f[f"{case}_mu1"], f[f"{case}_sigma1"], f[f"{case}_mu2"],
                             f[f"{case}_sigma2"])
  assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
  assert not bool(f[f"{case}_singular_warning"])


def test_fid_of_a_set_with_itself_is_zero_like_adm(fid_cases):
  mu, sigma = fid.stats_from_features(fid_cases["a_x1"].astype(np.float32))
  assert abs(float(fid_cases["c_fid"])) < 1e-6
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


@pytest.fixture(scope="module")
def is_cases():
  d = _load("is_cases.npz")
  d["logits"] = d["pool"].astype(np.float32) @ d["W"].astype(np.float32)   # (10000, 1008) float32
  return d


@pytest.mark.parametrize("n,split", [(10000, 5000), (10000, 1000), (9000, 5000), (9000, 1000)])
def test_inception_score_matches_adm(is_cases, n, split):
  got = isc.inception_score(is_cases["logits"][:n], "adm", split_size=split)
  assert got["inception_score"] == pytest.approx(float(is_cases[f"is_{n}_split{split}"]), rel=1e-6)
  assert got["inception_score_parts"] == -(-n // split)
  np.testing.assert_allclose(isc.adm_parts(is_cases["logits"][:n], split),
                             is_cases[f"is_{n}_split{split}_parts"], rtol=1e-6)


def test_inception_score_default_is_adm_split_5000(is_cases):
  assert isc.inception_score(is_cases["logits"])["inception_score"] == pytest.approx(
      float(is_cases["is_10000_split5000"]), rel=1e-6)


def test_softmax_without_bias_matches_adm(is_cases):
  logits = is_cases["logits"].astype(np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(p[:256], is_cases["softmax_head"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(p.mean(0), is_cases["softmax_colmean_10000"], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def pr_cases():
  d = _load("pr_cases.npz")
  ref, sam, shift = (d[k].astype(np.float32) for k in ("ref", "sam_gauss", "shift"))
  d["sets"] = {"gauss": (ref, sam), "shift": (ref, ref + shift), "self": (ref, ref),
               "gauss_x16": (16 * ref, 16 * sam)}
  return d


@pytest.mark.parametrize("case", ["gauss", "shift", "self", "gauss_x16"])
def test_precision_recall_match_adm(pr_cases, case):
  ref, sam = pr_cases["sets"][case]
  precision, recall = prc.precision_recall(ref, sam, arithmetic="adm")
  want = float(pr_cases[f"{case}_precision"]), float(pr_cases[f"{case}_recall"])
  assert precision == pytest.approx(want[0], abs=0.003) and recall == pytest.approx(want[1], abs=0.003)
  # Measured: one sample in 2000 apart on the float16 path (gauss precision), exact elsewhere.
  assert abs(precision - want[0]) <= 0.0005 and abs(recall - want[1]) <= 0.0005
  if case in ("self", "gauss_x16"):           # exact cases: the identical set and the float32 path
    assert (precision, recall) == want


def test_manifold_radii_follow_adm_paths(pr_cases):
  ref, sam = pr_cases["sets"]["gauss_x16"]
  # float32 path (the x16 sets overflow float16): radii identical to ADM's.
  np.testing.assert_array_equal(prc.manifold_radii(ref, arithmetic="adm"),
                                pr_cases["gauss_x16_radii_ref"][:, 0])
  np.testing.assert_array_equal(prc.manifold_radii(sam, arithmetic="adm"),
                                pr_cases["gauss_x16_radii_sample"][:, 0])
  # float16 path: ADM's radii are float16 values; ours agree to one float16 step (TF sums the
  # squared norms in an order we do not reproduce; metrics/precision_recall.py).
  ours = prc.manifold_radii(pr_cases["sets"]["gauss"][0], arithmetic="adm")
  adm = pr_cases["radii_ref"][:, 0]
  assert np.all(ours == ours.astype(np.float16))
  np.testing.assert_allclose(ours, adm, rtol=2 ** -9, atol=0)
  assert np.mean(ours == adm) > 0.6
