"""The Python API (gigatok_jax/api/): Tokenizer.load / encode / decode / reconstruct and
Generator.load / sample, from a run directory, a converted directory and an official-layout .pt.

Runs are saved at step 0 of a freshly initialised training state (random weights), which is all the
API needs: the checks compare its outputs with the model run directly, with --mode=sample, and with
itself across input forms, devices and calls.
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

import gigatok_jax
from gigatok_jax import inference, parallel, runs
from gigatok_jax.data import transforms
from helpers import forbid_training_objects, load_recipe, saved_run

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
  from gigatok_jax.train.tokenizer import TokenizerTask
  config = load_recipe("demo", "tiny")
  config.optim.ema_decay = 0.0
  # The reference architecture (not the demo's 8 groups / 'unpool' / 128 tokens), so that the run
  # exports to the official layout (test_official_pt_file_converts_once_into_the_cache).
  config.model.cnn_norm_groups = 32
  config.model.dec_query_init = "first_token"
  config.model.num_latent_tokens = 0
  workdir, _ = saved_run(tmp_path_factory.mktemp("tok"), config, TokenizerTask)
  return workdir, config


@pytest.fixture(scope="module")
def tok(tok_run):
  return gigatok_jax.Tokenizer.load(tok_run[0], devices=ONE_DEVICE)


def _photos(n, size=80, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size + 17, 3), dtype=np.uint8)   # not square, not S


def test_every_input_form_gives_the_same_codes(tok, tmp_path):
  arrays = _photos(3)
  paths = []
  for i, a in enumerate(arrays):
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(a).save(paths[-1])
  by_batch = tok.encode(arrays)
  assert by_batch.shape == (3, tok.num_tokens) and by_batch.dtype == np.int32
  np.testing.assert_array_equal(tok.encode(list(arrays)), by_batch)
  np.testing.assert_array_equal(tok.encode(paths), by_batch)
  np.testing.assert_array_equal(tok.encode([Image.fromarray(a) for a in arrays]), by_batch)
  np.testing.assert_array_equal(tok.encode([paths[0], Image.fromarray(arrays[1]), arrays[2]]),
                                by_batch)
  np.testing.assert_array_equal(tok.encode(arrays[1]), by_batch[1:2])            # one image
  import pathlib
  np.testing.assert_array_equal(tok.encode(pathlib.Path(paths[2])), by_batch[2:])
  grey = Image.fromarray(arrays[0]).convert("L")          # PIL / files: any mode becomes RGB
  np.testing.assert_array_equal(tok.encode(grey), tok.encode(np.asarray(grey.convert("RGB"))))


def test_outputs_are_the_models_own(tok, tok_run):
  """encode / decode / reconstruct = the loaded model applied to the documented centre crop."""
  workdir, config = tok_run
  arrays = _photos(5, seed=1)
  crops = tok.preprocess(arrays)
  assert crops.shape == (5, tok.image_size, tok.image_size, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops[0], transforms.center_crop(arrays[0], tok.image_size))
  loaded = inference.load(config, workdir, parallel.make_mesh(config.mesh, ONE_DEVICE))
  recon, codes = inference.reconstruct_fn(loaded.spec)(loaded.params, transforms.to_float(crops))
  np.testing.assert_array_equal(tok.encode(arrays), np.asarray(codes))
  images, api_codes = tok.reconstruct(arrays, return_codes=True)
  np.testing.assert_array_equal(api_codes, np.asarray(codes))
  expect = np.round((np.asarray(recon) + 1) * 127.5).astype(np.uint8)
  assert images.dtype == np.uint8 and images.shape == crops.shape
  assert np.abs(images.astype(int) - expect).max() <= 1
  # decode() looks the codes up; the full pass's quantized vectors come through the rotation
  # trick, equal up to float rounding, hence the 1-level tolerance here too.
  assert np.abs(tok.decode(api_codes).astype(int) - images).max() <= 1


def test_second_call_does_not_recompile(tok_run):
  tok = gigatok_jax.Tokenizer.load(tok_run[0], devices=ONE_DEVICE, batch_size=4)
  assert tok.trace_count == 0
  tok.encode(_photos(3))
  assert tok.trace_count == 1
  tok.encode(_photos(11, seed=2))             # other count, several batches: same compiled shape
  tok.encode(_photos(1, size=300, seed=3))    # other image size: the crop makes it S x S
  assert tok.trace_count == 1
  codes = tok.encode(_photos(2))
  tok.decode(codes)
  tok.decode(np.concatenate([codes] * 5))
  assert tok.trace_count == 2


def test_loading_builds_no_training_objects(tok_run, monkeypatch):
  forbid_training_objects(monkeypatch)
  tok = gigatok_jax.Tokenizer.load(tok_run[0], devices=ONE_DEVICE)
  assert tok.decode(tok.encode(_photos(2))).shape == (2, tok.image_size, tok.image_size, 3)


def test_all_devices_give_the_single_device_result(tok, tok_run):
  many = gigatok_jax.Tokenizer.load(tok_run[0], devices=jax.devices()[:4], batch_size=6)
  assert many.batch_size == 8 and len(many.mesh.devices.flat) == 4   # rounded up to 4 devices
  arrays = _photos(9, seed=4)
  codes = tok.encode(arrays)
  assert np.mean(many.encode(arrays) == codes) > 0.99
  assert np.abs(many.decode(codes).astype(int) - tok.decode(codes)).max() <= 2


@pytest.mark.parametrize("bad, match", [
    (np.zeros((64, 64), np.uint8), r"image 0 is greyscale \(shape \(64, 64\)\)"),
    (np.zeros((64, 64, 1), np.uint8), "image 0 is greyscale"),
    (np.zeros((64, 64, 3), np.float32), "image 0 has dtype float32; pass uint8"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)],
     r"image 1 has shape \(8, 8, 4\); expected \(H, W, 3\)"),
    ("/nonexistent/cat.png", r"image 0 \(/nonexistent/cat.png\): cannot read file"),
    ([], "no images given"),
])
def test_bad_images_are_one_line(tok, bad, match):
  with pytest.raises(gigatok_jax.InputError, match=match) as e:
    tok.encode(bad)
  assert "\n" not in str(e.value)


def test_bad_codes_are_one_line(tok):
  n, v = tok.num_tokens, tok.codebook_size
  cases = [
      (np.full((2, n), v), rf"code {v} \(image 0, token 0\) is out of range: the codebook has {v}"),
      (np.full((1, n), -1), "code -1 .* is out of range"),
      (np.zeros((2, n + 1), int), f"codes have {n + 1} tokens per image; this tokenizer uses {n}"),
      (np.zeros((2, n), np.float32), "codes have dtype float32; expected integers"),
      (np.zeros((2, 2, n), int), r"codes have shape \(2, 2, " + str(n) + r"\)"),
  ]
  for codes, match in cases:
    with pytest.raises(gigatok_jax.InputError, match=match) as e:
      tok.decode(codes)
    assert "\n" not in str(e.value)
  assert tok.decode(np.zeros(n, int)).shape[0] == 1       # one sequence is a batch of one


def test_bad_sources_are_one_line(tmp_path, tok_run):
  from gigatok_jax.errors import UserError
  (tmp_path / "empty").mkdir()
  (tmp_path / "notes.txt").write_text("x")
  for src, match in [(tmp_path / "empty", "not a gigatok_jax run directory"),
                     (tmp_path / "notes.txt", "not a weight file"),
                     ("no_such_model", "no such run directory or weight file, and not a known "
                                       "model name .*gigatok_ss")]:
    with pytest.raises(UserError, match=match) as e:
      gigatok_jax.Tokenizer.load(src)
    assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="holds a tokenizer, not a GPT"):
    gigatok_jax.Generator.load(tok_run[0])


def test_official_pt_file_converts_once_into_the_cache(tok, tok_run, tmp_path, monkeypatch):
  """An official-layout .pt (our export of the run) loads in one call; the second load reads
  the converted copy from the cache instead of converting again."""
  from gigatok_jax.convert import release
  pt = str(tmp_path / "VQ_demo_tiny.pt")
  release.export_run(tok_run[0], pt, log=lambda *_: None)
  cache = str(tmp_path / "cache")
  from_pt = gigatok_jax.Tokenizer.load(pt, recipe="configs/demo.py:tiny", cache_dir=cache,
                                       devices=ONE_DEVICE)
  assert from_pt.source.startswith("imported " + os.path.join(cache, "converted", "VQ_demo_tiny-"))
  arrays = _photos(3, seed=5)
  np.testing.assert_array_equal(from_pt.encode(arrays), tok.encode(arrays))
  np.testing.assert_array_equal(from_pt.reconstruct(arrays), tok.reconstruct(arrays))

  def no_conversion(*args, **kwargs):
    raise AssertionError("converted again")
  monkeypatch.setattr(release, "import_checkpoint", no_conversion)
  again = gigatok_jax.Tokenizer.load(pt, cache_dir=cache, devices=ONE_DEVICE)
  assert again.source == from_pt.source
  os.utime(pt, ns=(1, 1))                  # a changed file is converted again
  with pytest.raises(AssertionError, match="converted again"):
    gigatok_jax.Tokenizer.load(pt, cache_dir=cache, devices=ONE_DEVICE)


# ------------------------------------------------------------------------------------- Generator
@pytest.fixture(scope="module")
def ar_runs(tmp_path_factory):
  """The AR demo's tiny tokenizer and GPT, saved at step 0; the GPT's config names the tokenizer."""
  from gigatok_jax.train.gpt import GPTTask
  from gigatok_jax.train.tokenizer import TokenizerTask
  root = tmp_path_factory.mktemp("ar")
  tok_config = load_recipe("demo_ar", "tokenizer")       # small widths, the demo's 16 tokens
  tok_config.model.update(dict(enc_width=64, enc_layers=1, dec_width=64, dec_layers=1,
                               distill_depth=1))
  tok_dir, _ = saved_run(root / "tok", tok_config, TokenizerTask)
  config = load_recipe("demo_ar")
  config.model.update(dict(width=32, layers=2, heads=2))
  config.sample.batch_size = 8
  config.tokenizer.workdir = tok_dir
  config.sample.num_samples = 12
  config.sample.classes = (3, 1, 4)
  config.sample.cfg_scale = 2.0
  gpt_dir = _saved_gpt_run(root / "gpt", config, GPTTask)
  return gpt_dir, tok_dir, config


def _saved_gpt_run(root, config, task_cls):
  """As saved_run, with noise on every weight: the GPT's output head starts at zero, whose flat
  logits would make greedy and top-k sampling indistinguishable from ties."""
  import dataclasses
  workdir = str(root / "run")
  task = task_cls(config, parallel.make_mesh(config.mesh, ONE_DEVICE))
  state = task.init_state()
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  noisy = [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  state = dataclasses.replace(state, params=jax.tree.unflatten(tree, noisy))
  runs.write_config(config, workdir)
  ckpt = runs.open_checkpoints(workdir, config)
  ckpt.save(0, state, force=True)
  ckpt.close()
  return workdir


def test_generator_samples_what_the_sample_mode_samples(ar_runs):
  from gigatok_jax.modes import sample as sample_mode
  gpt_dir, tok_dir, config = ar_runs
  gen = gigatok_jax.Generator.load(gpt_dir)            # the tokenizer from the run's config
  assert gen.tokenizer.source == "checkpoint step 0" and gen.batch_size == 8
  labels = sample_mode.sample_labels(config.sample, config.model.num_classes)
  images = gen.sample(labels, seed=config.sample.seed)
  size = gen.tokenizer.image_size
  assert images.shape == (12, size, size, 3) and images.dtype == np.uint8
  result = sample_mode.run(config, gpt_dir, progress=False)
  np.testing.assert_array_equal(images, np.load(result["npz"])["arr_0"])


def test_generator_settings_seeds_and_compiles(ar_runs):
  gpt_dir, tok_dir, _ = ar_runs
  tok = gigatok_jax.Tokenizer.load(tok_dir, devices=ONE_DEVICE)
  gen = gigatok_jax.Generator.load(gpt_dir, tokenizer=tok, devices=ONE_DEVICE, batch_size=4)
  assert gen.defaults.cfg_scale == 2.0
  a, codes = gen.sample([1, 2, 3, 4, 5], seed=0, return_codes=True)
  assert codes.shape == (5, tok.num_tokens) and tok.decode(codes).tobytes() == a.tobytes()
  assert gen.trace_count == 1
  np.testing.assert_array_equal(gen.sample([1, 2, 3, 4, 5], seed=0), a)   # same seed, same images
  assert gen.trace_count == 1                                              # and no recompile
  assert not np.array_equal(gen.sample([1, 2, 3, 4, 5], seed=1), a)
  greedy = gen.sample_codes([7, 7], temperature=0.0, cfg_scale=1.0)
  np.testing.assert_array_equal(greedy[0], greedy[1])                     # argmax: deterministic
  assert gen.trace_count == 2                                              # new settings compile
  assert len(np.unique(greedy)) > 1                                       # logits not flat
  np.testing.assert_array_equal(gen.sample_codes(7, top_k=1, cfg_scale=1.0, seed=5), greedy[:1])
  for kwargs, match in [({"classes": [10]}, r"class 10 \(position 0\) is out of range: this "
                                            r"generator has 10 classes"),
                        ({"classes": [1.5]}, "classes must be integers"),
                        ({"classes": [1], "top_p": 0.0}, "invalid sampling settings"),
                        ({"classes": [1], "cfg_schedule": "cosine"}, "cfg_schedule must be one of")]:
    with pytest.raises(gigatok_jax.InputError, match=match):
      gen.sample(**kwargs)


def test_generator_refuses_a_tokenizer_that_does_not_fit(ar_runs, tok):
  from gigatok_jax.errors import UserError
  with pytest.raises(UserError, match="the GPT models 16 tokens of a 256-code vocabulary but the "
                     "tokenizer gives 64 tokens of 512 codes: pass the tokenizer it was trained on"):
    gigatok_jax.Generator.load(ar_runs[0], tokenizer=tok, devices=ONE_DEVICE)


def test_load_takes_the_compute_dtype(ar_runs):
  """`dtype=` sets inference_dtype; without it a float32 recipe stays float32; a bad one is a line."""
  gpt_dir, tok_dir, _ = ar_runs
  tok = gigatok_jax.Tokenizer.load(tok_dir, devices=ONE_DEVICE)
  assert tok.config.model.dtype == "float32"
  gen = gigatok_jax.Generator.load(gpt_dir, devices=ONE_DEVICE, dtype="bfloat16")
  assert gen.config.model.dtype == "bfloat16" and gen.config.inference_dtype == "bfloat16"
  assert gen.tokenizer.config.model.dtype == "bfloat16"         # its own tokenizer, same dtype
  assert gen.sample_codes([1], cfg_scale=1.0).shape == (1, tok.num_tokens)
  from gigatok_jax.errors import UserError
  with pytest.raises(UserError, match=r"dtype must be one of .*got 'fp16'"):
    gigatok_jax.Tokenizer.load(tok_dir, dtype="fp16")
