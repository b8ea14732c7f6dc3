"""`python -m gigatok_jax.convert.reference_batch`: ADM-layout reference batches from image batches.

A fixed random projection stands in for the Inception network here (the network and both
protocols are tested in test_adm_inception.py, which also runs this command on the real one).
"""

import contextlib
import io

import numpy as np
import pytest

from gigatok_jax.convert import reference_batch
from gigatok_jax.errors import ConfigError
from gigatok_jax.metrics import evaluator, fid

PROJECTION = np.random.default_rng(0).normal(size=(8 * 8 * 3, 12)) / 100   # float64: exact enough


def fake_measure(images):
  pool = images.reshape(len(images), -1).astype(np.float64) @ PROJECTION
  return evaluator.Measured(pool, pool[:, :5] ** 2, pool[:, :10])


def _images(tmp_path, n=7, dtype=np.uint8, key="arr_0"):
  images = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3)).astype(dtype)
  path = str(tmp_path / "images.npz")
  np.savez(path, **{key: images})
  return path, images


@pytest.mark.parametrize("protocol", ["adm", "pytorch_fid"])
def test_reference_holds_both_statistics_the_images_and_the_protocol(tmp_path, protocol):
  path, images = _images(tmp_path)
  out = str(tmp_path / "ref.npz")
  info = reference_batch.build(path, "unused", out, protocol=protocol, batch_size=3,
                               measure=fake_measure)
  assert info["num_images"] == 7 and info["protocol"] == protocol
  ref = fid.read_reference(out, load_images=True)
  measured = fake_measure(images)
  np.testing.assert_allclose(ref["mu"], measured.pool.mean(0), rtol=1e-6)
  np.testing.assert_allclose(ref["sigma"], np.cov(measured.pool, rowvar=False), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(ref["sigma_s"], np.cov(measured.spatial, rowvar=False), rtol=1e-6,
                             atol=1e-9)
  np.testing.assert_array_equal(ref["arr_0"], images)
  assert ref["num_images"] == 7 and ref["sha256"] == info["sha256"]
  assert evaluator.reference_protocol(ref) == protocol
  # Evaluating under the other protocol is refused, naming the config key.
  other = "pytorch_fid" if protocol == "adm" else "adm"
  with pytest.raises(ConfigError, match=f"eval.fid_reference.*protocol '{protocol}'"):
    evaluator.check_reference(ref, other)
  evaluator.check_reference(ref, protocol)


def test_no_images_and_adm_batches_without_a_protocol_entry(tmp_path):
  path, _ = _images(tmp_path)
  out = str(tmp_path / "ref.npz")
  reference_batch.build(path, "unused", out, with_images=False, measure=fake_measure)
  assert fid.read_reference(out)["num_images"] == 0
  adm_style = str(tmp_path / "adm.npz")
  fid.write_reference(adm_style, mu=np.zeros(3), sigma=np.eye(3))
  assert evaluator.reference_protocol(fid.read_reference(adm_style)) == "adm"


@pytest.mark.parametrize("make,needle", [
    (lambda t: str(t / "missing.npz"), "--images: .*missing.npz not found"),
    (lambda t: _images(t, key="images")[0], "is not an .npz image batch"),
    (lambda t: _images(t, dtype=np.float32)[0], "arr_0 must be uint8"),
    (lambda t: _images(t, n=1)[0], "at least 2 images"),
])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, make, needle):
  images = make(tmp_path)
  inception = tmp_path / "inception.safetensors"
  inception.write_bytes(b"x")
  rc = reference_batch.main([f"--images={images}", f"--inception={inception}",
                             f"--out={tmp_path / 'ref.npz'}"])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
  assert __import__("re").search(needle, err), err
  assert not (tmp_path / "ref.npz").exists()


def test_missing_inception_file_is_named(tmp_path, capsys):
  images, _ = _images(tmp_path)
  with contextlib.redirect_stdout(io.StringIO()):
    rc = reference_batch.main([f"--images={images}", f"--inception={tmp_path}/none.safetensors",
                               f"--out={tmp_path / 'ref.npz'}"])
  assert rc == 2 and "--inception: " in capsys.readouterr().err


def test_eval_set_sizes_are_checked_with_the_reason():
  assert evaluator.set_size_problem(1, "adm", False).startswith("1 image(s)")
  assert "k=3" in evaluator.set_size_problem(3, "adm", True)
  assert evaluator.set_size_problem(3, "adm", False) is None
  assert "10 parts" in evaluator.set_size_problem(9, "pytorch_fid", False)
  assert evaluator.set_size_problem(10, "pytorch_fid", True) is None
