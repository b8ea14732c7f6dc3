"""The AR pipeline end to end on the embedded digits: tokenizer -> extract_codes -> GPT -> sample.

One tiny tokenizer run is shared by the module; every stage runs the real mode function.
"""

import json
import os

import jax
import numpy as np
import pytest

from gigatok_jax import checkpointing, inference, parallel
from gigatok_jax.config import validate
from gigatok_jax.modes import extract_codes
from gigatok_jax.modes import sample as sample_images
from gigatok_jax.data import codes as codes_lib
from gigatok_jax.data import pipeline, transforms
from gigatok_jax.errors import ConfigError, DataError
from gigatok_jax.train import loop, optim
from helpers import load_recipe

ONE_DEVICE = jax.devices()[:1]


def tokenizer_config():
  c = load_recipe("demo_ar", "tokenizer")
  c.model.update(dict(enc_width=64, enc_layers=1, dec_width=64, dec_layers=1, distill_depth=1))
  c.total_steps = 2
  c.checkpoint_every_steps = 2
  c.image_every_steps = 100
  c.eval_num_images = 4
  c.global_batch_size = 8
  c.mesh.data = 1
  return c


def gpt_config(tok_dir, codes_dir="", eval_dir="", total_steps=6):
  c = load_recipe("demo_ar")
  c.model.update(dict(width=32, layers=2, heads=2))
  c.tokenizer.workdir = tok_dir
  c.data.codes_path, c.data.eval_codes_path = codes_dir, eval_dir
  c.total_steps = total_steps
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 3
  c.eval_num_batches = 1
  c.global_batch_size = 8
  c.extract.batch_size = 16
  c.extract.images_per_shard = 100
  c.extract.max_images = 250            # 3 shards: 100 + 100 + 50
  c.sample.num_samples = 20
  c.sample.batch_size = 8               # 3 batches, the last one partial
  c.sample.grid_images = 20
  return c


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tokenizer"))
  loop.train(tokenizer_config(), workdir, progress=False, devices=ONE_DEVICE)
  return workdir


@pytest.fixture(scope="module")
def codes_dirs(tok_dir, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("gpt"))
  cfg = gpt_config(tok_dir)
  out = extract_codes.run(cfg, root, progress=False)
  cfg.extract.split, cfg.extract.max_images = "eval", 0
  extract_codes.run(cfg, root, progress=False)
  return root, out


@pytest.fixture(scope="module")
def gpt_run(tok_dir, codes_dirs, tmp_path_factory):
  """A 2-step GPT run on the codes (with validation codes), shared by sample / probe / checks."""
  root, out = codes_dirs
  cfg = gpt_config(tok_dir, out["output"], os.path.join(root, "codes", "eval"), total_steps=2)
  gpt_dir = str(tmp_path_factory.mktemp("gpt_run"))
  loop.train(cfg, gpt_dir, progress=False, devices=ONE_DEVICE)
  return cfg, gpt_dir


def test_extracted_codes_are_the_tokenizer_codes(tok_dir, codes_dirs):
  root, out = codes_dirs
  assert out["num_shards"] == 3 and out["shards_written"] == 3 and out["num_images"] == 250
  files = codes_lib.complete_shards(out["output"], "data.codes_path")
  source = codes_lib.CodeRecordSource(files)
  assert len(source) == 250
  # Records of shard 0 are images 0..99 of the train split, in order, with their labels.
  tok = tokenizer_config()
  images = pipeline.make_source(tok.data, "train")
  loaded = inference.load(tok, tok_dir, parallel.make_mesh(tok.mesh, ONE_DEVICE))
  batch = np.stack([images[i]["image"] for i in range(5)])
  expect = np.asarray(loaded.model().encode(transforms.to_float(batch)))
  for i in range(5):
    rec = source[i]
    assert rec["codes"].shape == (1, 16) and rec["label"] == images[i]["label"]
    np.testing.assert_array_equal(rec["codes"][0], expect[i])
  meta = codes_lib.read_metadata(out["output"])
  assert meta["num_tokens"] == 16 and meta["vocab_size"] == 256 and meta["tokenizer_step"] == 2
  assert len(codes_lib.CodeRecordSource(
      codes_lib.complete_shards(os.path.join(root, "codes", "eval"), "x"))) == 197


def test_extraction_resumes_and_rejects_unfinished_dirs(tok_dir, codes_dirs):
  root, out = codes_dirs
  d = out["output"]
  victim = codes_lib.shard_path(d, 1, 3)
  before = open(victim, "rb").read()
  os.remove(victim)
  with pytest.raises(DataError, match="codes-00001-of-00003.array_record: missing: .* 2 of 3 shards"):
    validate.validate(gpt_config(tok_dir, d), num_devices=1)
  again = extract_codes.run(gpt_config(tok_dir), root, progress=False)
  assert again["shards_written"] == 1                   # only the missing shard is redone
  assert open(victim, "rb").read() == before


def test_flip_and_ten_crop_views():
  image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
  flip = extract_codes.image_views(image, 32, "flip", 1.1)
  assert flip.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(flip[1], flip[0][:, ::-1])
  ten = extract_codes.image_views(image, 32, "ten_crop", 1.1)
  assert ten.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(ten[5:], ten[:5, :, ::-1])
  big = transforms.center_crop(image, 35)                # the centre square of round(32 * 1.1)
  np.testing.assert_array_equal(ten[0], big[:32, :32])   # its top-left corner crop
  np.testing.assert_array_equal(ten[4], big[1:33, 1:33])  # and its centre


def test_gpt_resume_is_bit_identical_and_validation_runs(tok_dir, codes_dirs, tmp_path):
  root, out = codes_dirs
  eval_dir = os.path.join(root, "codes", "eval")
  cfg = lambda: gpt_config(tok_dir, out["output"], eval_dir)  # noqa: E731
  validate.validate(cfg(), num_devices=1)
  straight = loop.train(cfg(), str(tmp_path / "a"), progress=False, devices=ONE_DEVICE)
  half = loop.train(cfg(), str(tmp_path / "b"), progress=False, stop_at_step=3,
                           devices=ONE_DEVICE)
  assert int(half.step) == 3
  resumed = loop.train(cfg(), str(tmp_path / "b"), progress=False, devices=ONE_DEVICE)
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The output head starts at zero and has moved; validation loss went to TensorBoard.
  assert np.abs(np.asarray(straight.params["output"])).max() > 0
  events = [f for f in os.listdir(tmp_path / "a") if f.startswith("events.out")]
  assert events


def test_sample_mode_writes_npz_grid_and_settings(gpt_run):
  cfg, gpt_dir = gpt_run
  cfg = cfg.copy_and_resolve_references()
  result = sample_images.run(cfg, gpt_dir, progress=False)
  data = dict(np.load(result["npz"]))
  assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(data["labels"], np.arange(20) % 10)
  assert os.path.isfile(result["grid"])
  settings = json.load(open(result["npz"][:-4] + ".json"))
  assert settings["sampling"]["cfg_scale"] == cfg.sample.cfg_scale
  assert settings["gpt_step"] == 2 and settings["tokenizer_step"] == 2
  assert settings["compute_dtype"] == {"gpt": "float32", "tokenizer": "float32"}
  # Same settings, same images; another seed, other images.
  again = np.load(sample_images.run(cfg, gpt_dir, progress=False)["npz"])["arr_0"]
  np.testing.assert_array_equal(again, data["arr_0"])
  cfg.sample.seed = 1
  other = sample_images.run(cfg, gpt_dir, progress=False)["npz"]
  assert other != result["npz"] and os.path.isfile(result["npz"])   # earlier results are kept
  assert not np.array_equal(np.load(other)["arr_0"], data["arr_0"])


def test_gpt_config_errors_name_the_key(tok_dir, codes_dirs):
  _, out = codes_dirs
  bad = gpt_config(tok_dir, out["output"])
  bad.model.vocab_size = 512
  with pytest.raises(ConfigError, match="model.vocab_size"):
    validate.validate(bad, num_devices=1)
  with pytest.raises(ConfigError, match="data.codes_path"):
    validate.validate(gpt_config(tok_dir, ""), num_devices=1)
  bad = gpt_config(tok_dir, out["output"])
  bad.model.position = "rope_3d"
  with pytest.raises(ConfigError, match="model.position"):
    validate.validate(bad, num_devices=1, check_data=False)
  bad = gpt_config(tok_dir)
  bad.tokenizer.recipe = "configs/nope.py"
  with pytest.raises(ConfigError, match="tokenizer.recipe"):
    extract_codes.run(bad, "/tmp/unused", progress=False)
  bad.tokenizer.recipe, bad.tokenizer.workdir = "", "/nonexistent"
  with pytest.raises(ConfigError, match="tokenizer.workdir"):
    extract_codes.run(bad, "/tmp/unused", progress=False)


def test_wsd_schedule():
  s = optim.warmup_stable_decay(1.0, warmup_steps=10, total_steps=100, decay_fraction=0.2)
  values = [float(s(i)) for i in (0, 5, 10, 50, 80, 85, 100)]
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 1.0, 1.0, 1 - np.sqrt(0.25), 0.0], atol=1e-6)
  # The recipes' warm-up starts at lr / 100, as the official scheduler.
  official = optim.warmup_stable_decay(1.0, warmup_steps=10, total_steps=100, decay_fraction=0.2,
                                       warmup_init_ratio=0.01)
  np.testing.assert_allclose([float(official(i)) for i in (0, 5, 10)], [0.01, 0.505, 1.0], atol=1e-6)
  constant = optim.warmup_stable_decay(1.0, warmup_steps=0, total_steps=100, decay_fraction=0.0)
  assert float(constant(0)) == float(constant(99)) == 1.0
  mask = optim.matrices_only({"w": np.zeros((2, 2)), "norm": np.zeros(2)})
  assert mask == {"w": True, "norm": False}


def test_extraction_refuses_to_mix_settings_and_sample_checks_the_trained_model(
    tok_dir, codes_dirs, gpt_run, tmp_path):
  root, out = codes_dirs
  cfg = gpt_config(tok_dir)
  cfg.extract.augment = "flip"                     # other settings into the same directory
  with pytest.raises(ConfigError, match="extract.output"):
    extract_codes.run(cfg, root, progress=False)
  # A directory mixing two extractions' shard counts is refused by training.
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  for name in ("codes-00000-of-00002.array_record", "codes-00001-of-00003.array_record"):
    (mixed / name).write_bytes(b"")
  with pytest.raises(ConfigError, match="mixes shards"):
    codes_lib.complete_shards(str(mixed), "data.codes_path")
  # Sampling with a model group other than the trained one names the key.
  cfg, gpt_dir = gpt_run
  cfg = cfg.copy_and_resolve_references()
  cfg.model.norm_eps = 1e-6
  with pytest.raises(ConfigError, match="model.norm_eps"):
    sample_images.run(cfg, gpt_dir, progress=False)


def test_linear_probe_learns_separable_features_and_runs_on_a_gpt(gpt_run):
  from gigatok_jax.modes import probe as linear_probe
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (10, 16))
  y = rng.integers(0, 10, 600)
  x = centres[y] + rng.normal(0, 1, (600, 16)) + 50.0          # offset: BatchNorm must handle it
  r = linear_probe.train_probe(x[:500], y[:500], x[500:], y[500:], num_classes=10, epochs=30,
                               warmup_epochs=3, batch_size=64, base_lr=4.0)
  assert r["top1"] > 0.9, r
  cfg, gpt_dir = gpt_run
  cfg = cfg.copy_and_resolve_references()
  cfg.probe.update(epochs=2, warmup_epochs=1, batch_size=64, feature_batch_size=64)
  result = linear_probe.run(cfg, gpt_dir, devices=ONE_DEVICE)
  assert result["layer"] == 1 and result["num_train"] == 250 and result["num_eval"] == 197
  assert 0.0 <= result["top1"] <= 1.0 and os.path.isfile(result["json"])


def test_ar_probing_chain_scores_samples_and_probes(tok_dir, codes_dirs, tmp_path):
  """The one-command AR probing chain (train -> sample -> gFID/IS/PR -> validation loss -> probe) on
  the tiny pipeline. A reference built from the very samples gives FID ~0 and precision = recall
  = 1. A fixed random projection stands in for Inception (which has its own parity test)."""
  from gigatok_jax import fileio
  from gigatok_jax.metrics import fid
  from gigatok_jax.modes import ar_probe
  from gigatok_jax.modes import eval_gpt as gpt_eval
  root, out = codes_dirs
  cfg = gpt_config(tok_dir, out["output"], os.path.join(root, "codes", "eval"), total_steps=2)
  cfg.probe.update(epochs=1, warmup_epochs=0, batch_size=64, feature_batch_size=64)
  with pytest.raises(ConfigError, match="eval.fid_reference"):
    validate.check_ar_probe_inputs(cfg)
  projection = np.random.default_rng(0).normal(size=(32 * 32 * 3, 24)).astype(np.float32)
  head = np.random.default_rng(1).normal(size=(24, 1008)).astype(np.float32)

  def features_fn(images):
    pool = images.reshape(len(images), -1).astype(np.float32) / 255.0 @ projection
    return pool, pool[:, :6] * 2.0, pool @ head      # (pool, spatial, logits) as the network

  # The reference: the samples this very run will produce (same settings, same seed).
  gpt_dir = str(tmp_path / "gpt")
  loop.train(cfg, gpt_dir, progress=False, devices=ONE_DEVICE)
  images = np.load(sample_images.run(cfg, gpt_dir, progress=False)["npz"])["arr_0"]
  ref = str(tmp_path / "ref.npz")
  pool, spatial, _ = features_fn(images)
  stats, spatial_stats = fid.FeatureStats().update(pool), fid.FeatureStats().update(spatial)
  fid.write_reference(ref, mu=stats.mu, sigma=stats.sigma, images=images, mu_s=spatial_stats.mu,
                      sigma_s=spatial_stats.sigma)
  cfg.eval.update(fid_reference=ref, batch_size=8)
  result = ar_probe.run(cfg, gpt_dir, progress=False, features_fn=features_fn)
  assert result["gpt_step"] == 2 and result["num_samples"] == 20
  assert abs(result["gfid"]) < 1e-6 and result["precision"] == result["recall"] == 1.0
  assert abs(result["sfid"]) < 1e-6 and result["protocol"] == "adm"
  assert result["inception_score"] >= 1.0 and result["val_loss"] > 0
  assert 0.0 <= result["linear_probe_top1"] <= 1.0 and result["probe_layer"] == 1
  assert result["reference"]["sha256"] == fileio.sha256_file(ref)
  details = json.load(open(result["details"]["eval"]))
  assert details["sample_settings"]["sampling"]["cfg_scale"] == cfg.sample.cfg_scale
  with pytest.raises(ConfigError, match="eval.samples"):
    gpt_eval.newest_samples(str(tmp_path / "nowhere"))
