"""gs:// workdirs and datasets, against a fake GCS server (tests/fake_gcs.py) with no network.

No mock of our own code: gcsfs (our `fileio`, through etils epath), TensorStore (Orbax
checkpoints) and array_record's own GCS reader (grain) all talk HTTP to the fake bucket. Every test
asserts that nothing was created under the current directory (the old failure: a local `./gs:/`
folder) and lists what landed in the bucket. The last test runs the whole chain on a gs:// workdir:
train -> resume -> reconstruct -> eval -> extract_codes -> GPT train -> sample -> eval, plus
`Tokenizer.load` of the bucket run.

TensorBoard's own reader (its TensorFlow stub, through fsspec) reads the events from the bucket.
Not covered: real GCS behaviour the fake does not model (IAM, quotas, retries after 5xx errors),
and the tf.io.gfile backend that epath picks where TensorFlow is installed (EPATH_USE_TF=false
here; the [tfds] extra installs TensorFlow).
"""

import io
import json
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from fake_gcs import FakeGcs

from gigatok_jax import fileio
from gigatok_jax import tensorboard_writer as tb
from gigatok_jax.data import codes as codes_lib
from gigatok_jax.data import pipeline, prepare, records
from gigatok_jax.errors import ConfigError, DataError, UserError

BUCKET = "fake-bucket"


def _fresh_gcs_clients():
  """gcsfs / epath cache filesystems, listings and epath's backend choice (EPATH_USE_TF is read
  once per process, at its first path): start each server afresh."""
  import gcsfs.core
  from etils.epath import backend, gpath
  gcsfs.core.GCSFileSystem.clear_instance_cache()
  type(backend.fsspec_backend)._get_filesystem.cache_clear()
  gpath._is_tf_installed.cache_clear()


@pytest.fixture(scope="module")
def gcs():
  import fsspec
  import gcsfs.core
  registry = sys.modules["fsspec.registry"]._registry    # (`fsspec.registry` is a read-only view)
  with FakeGcs() as server, pytest.MonkeyPatch.context() as mp:
    for key, value in server.env().items():
      mp.setenv(key, value)
    # The plain GCS filesystem (gcsfs's default subclass asks a gRPC control plane for the bucket
    # type before each open; it reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT only when imported), and
    # anonymous access (no search for credentials).
    for name in ("gs", "gcs"):
      mp.setitem(registry, name, gcsfs.core.GCSFileSystem)
    for name in ("gs", "gcs"):
      mp.setitem(fsspec.config.conf, name, {**fsspec.config.conf.get(name, {}), "token": "anon"})
    _fresh_gcs_clients()
    yield server
    _fresh_gcs_clients()
  assert not server.unsupported, server.unsupported


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
  """Runs the test in an empty current directory and checks that it stays empty."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield cwd
  assert not os.listdir(cwd), f"created under the current directory: {os.listdir(cwd)}"


# --------------------------------------------------------------------------------- fileio
@pytest.mark.parametrize("where", ["local", "gs"])
def test_fileio_reads_and_writes_alike_on_disks_and_buckets(where, gcs, tmp_path, in_tmp_cwd):
  base = str(tmp_path / "local") if where == "local" else f"gs://{BUCKET}/unit"
  fileio.makedirs(base)
  a = fileio.join(base, "a", "x.json")
  assert fileio.atomic_write_json(a, {"v": np.float32(1.5)}) == a
  assert fileio.read_json(a) == {"v": 1.5}
  fileio.atomic_write_text(fileio.join(base, "a", "t.txt"), "héllo")
  fileio.atomic_write_bytes(fileio.join(base, "b.bin"), b"\x00\x01" * 1000)
  assert fileio.read_text(fileio.join(base, "a", "t.txt")) == "héllo"
  assert fileio.isfile(a) and not fileio.isdir(a) and fileio.exists(a)
  assert fileio.isdir(fileio.join(base, "a")) and not fileio.isfile(fileio.join(base, "a"))
  assert not fileio.exists(fileio.join(base, "nope")) and not fileio.isfile(fileio.join(base, "no"))
  assert fileio.listdir(base) == ["a", "b.bin"]
  assert fileio.scan(base) == (["a"], ["b.bin"])
  assert fileio.glob(fileio.join(base, "a", "*.json")) == [a]
  assert fileio.glob(fileio.join(base, "*", "x.json")) == [a]
  assert fileio.size(fileio.join(base, "b.bin")) == 2000
  with fileio.open_read(fileio.join(base, "b.bin")) as f:
    f.seek(1998)
    assert f.read() == b"\x00\x01"
  # A writer that fails leaves nothing under the name, and no temporary file beside it.
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(fileio.join(base, "a", "broken.json")) as f:
      f.write("{half")
      raise RuntimeError("crash mid-write")
  assert fileio.listdir(fileio.join(base, "a")) == ["t.txt", "x.json"]
  fileio.copy(a, fileio.join(base, "c", "y.json"))
  fileio.replace(fileio.join(base, "c", "y.json"), fileio.join(base, "c", "z.json"))
  assert fileio.listdir(fileio.join(base, "c")) == ["z.json"]
  assert fileio.sha256_file(fileio.join(base, "c", "z.json")) == fileio.sha256_file(a)
  local_copy = str(tmp_path / "down" / "z.json")
  fileio.copy(fileio.join(base, "c", "z.json"), local_copy)
  assert json.load(open(local_copy)) == {"v": 1.5}
  fileio.remove(fileio.join(base, "c", "z.json"))
  fileio.remove(fileio.join(base, "c", "z.json"))          # missing_ok
  assert not fileio.exists(fileio.join(base, "c", "z.json"))
  fileio.rmtree(fileio.join(base, "a"))
  fileio.rmtree(fileio.join(base, "c"))                   # an empty directory (disks only)
  fileio.rmtree(fileio.join(base, "never"))               # missing_ok
  assert fileio.listdir(base) == ["b.bin"]
  if where == "gs":
    assert gcs.names(prefix="unit/") == ["unit/b.bin"]


def test_path_strings():
  assert fileio.is_remote("gs://b/x") and not fileio.is_remote("/tmp/x")
  assert fileio.resolve("gs://b/x") == "gs://b/x"
  assert fileio.resolve("~/x") == os.path.join(os.path.expanduser("~"), "x")
  assert fileio.join("gs://b/run", "eval", "a.json") == "gs://b/run/eval/a.json"
  assert fileio.dirname("gs://b/run/a.json") == "gs://b/run"
  assert fileio.basename("gs://b/run/") == "run"
  with pytest.raises(UserError, match="gs://b/x.pt is not on a local disk"):
    fileio.local_only("gs://b/x.pt", "converting")


# ------------------------------------------------------------------------ checkpoint integrity
def test_checkpoint_manifest_check_and_set_aside_work_in_a_bucket(gcs, in_tmp_cwd):
  """The manifest, its check and the set-aside move (a directory rename, which object stores do
  not have) on a step in the bucket; training's restore path calls exactly these."""
  from etils import epath
  from gigatok_jax import checkpoint_integrity as integrity
  step_dir = epath.Path(f"gs://{BUCKET}/ckpt/checkpoints/200")
  fileio.atomic_write_bytes(str(step_dir / "state" / "d" / "abc"), bytes(range(256)) * 40)
  fileio.atomic_write_text(str(step_dir / "meta" / "metadata"), '{"step": 200}')
  integrity.write_manifest(step_dir, 200)
  assert integrity.has_manifest(step_dir) and integrity.verify(step_dir) is None
  assert "checksums.json.tmp" not in " ".join(gcs.names(prefix="ckpt/"))
  # Same size, one byte changed: only the sha256 notices.
  fileio.atomic_write_bytes(str(step_dir / "state" / "d" / "abc"), b"\x01" + bytes(range(1, 256))
                            + bytes(range(256)) * 39)
  assert integrity.verify(step_dir) == "state/d/abc has changed since it was saved (sha256 differs)"
  target = integrity.set_aside(step_dir, "damaged")
  assert str(target).startswith(f"gs://{BUCKET}/ckpt/checkpoints/set_aside/200.damaged.")
  assert not fileio.exists(str(step_dir))
  moved = sorted(n.split("/", 4)[-1] for n in gcs.names(prefix="ckpt/checkpoints/set_aside/"))
  assert moved == ["checksums.json", "meta/metadata", "state/d/abc"], moved
  assert gcs.names(prefix="ckpt/checkpoints/200") == []


# --------------------------------------------------------------------------------- TensorBoard
def _read_events(logdir):
  # tensorboard's switch to its TensorFlow stub (as tests/test_reporting.py).
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
  acc.Reload()
  return acc


def test_event_files_in_a_bucket_read_back_with_tensorboard(gcs, tmp_path, in_tmp_cwd):
  logdir = f"gs://{BUCKET}/tb"
  writer = tb.EventWriter(logdir, upload_every_s=3600, part_bytes=4000)
  writer.scalars(0, {"loss": 1.0})
  assert gcs.names(prefix="tb/") == []                  # buffered: nothing uploaded yet
  writer.flush()
  assert gcs.names(prefix="tb/") == [f"tb/{fileio.basename(writer.path)}"]
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
  for step in range(1, 40):
    writer.scalars(step, {"loss": 1.0 / (step + 1), "psnr": float(step)})
    if step == 20:
      writer.image(step, "grid", image)
    if step % 10 == 0:
      writer.flush()
  writer.close()
  names = gcs.names(prefix="tb/")
  assert len(names) > 1 and names[1:] == sorted(names[1:])   # parts: <name>.p001, ...
  local = tmp_path / "events"
  local.mkdir()
  for name in names:
    (local / os.path.basename(name)).write_bytes(gcs.read(BUCKET, name))
  for acc in (_read_events(str(local)), _read_events(logdir)):   # copies; the bucket itself
    assert [e.step for e in acc.Scalars("loss")] == list(range(40))
    assert [e.value for e in acc.Scalars("psnr")] == [float(s) for s in range(1, 40)]
    [img] = acc.Images("grid")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))),
                                  image)


def test_imported_weights_in_a_bucket_are_written_whole_and_restore(gcs, in_tmp_cwd):
  import jax
  from gigatok_jax import runs
  run = f"gs://{BUCKET}/imported"
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), np.float32, sharding=sharding)}}
  for value in (1.0, 2.0):               # the second import replaces the first
    path = runs.save_imported(run, {"params": {"w": np.full(3, value, np.float32)}},
                              {"kind": "gpt", "source": "test"})
    assert path == f"{run}/pretrained" and runs.find_imported(run) == path
    restored = runs.restore_imported(path, abstract)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.full(3, value))
  assert runs.read_imported_info(path)["items"] == ["params"]
  assert "imported/pretrained/info.json" in gcs.names(prefix="imported/")


# --------------------------------------------------------------------------------- datasets
def _image_folder(root, n=6):
  rng = np.random.default_rng(1)
  for i in range(n):
    path = os.path.join(root, f"c{i % 2}", f"{i}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path)


def test_prepared_dataset_in_a_bucket_trains_and_is_complete_or_refused(gcs, tmp_path, in_tmp_cwd):
  src = str(tmp_path / "images")
  _image_folder(src)
  out = f"gs://{BUCKET}/data/ds"
  summary = prepare.prepare_image_folder(src, out, 3, progress=False)
  assert summary["num_records"] == 6
  assert gcs.names(prefix="data/ds/") == [f"data/ds/{records.shard_name(k, 3)}" for k in range(3)] \
      + ["data/ds/metadata.json"]
  # Read straight from the bucket by array_record's GCS reader, through grain.
  cfg = pipeline.default_data_config()
  cfg.update(dict(source="array_record", train_path=out, image_size=32, read_threads=2))
  batch = next(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                            process_count=1))
  assert batch["image"].shape == (4, 32, 32, 3)
  assert set(batch["label"].tolist()) <= {0, 1}
  # The same folder read from the bucket as an image folder (reconstruct input).
  for i, name in enumerate(sorted(os.listdir(os.path.join(src, "c0")))):
    gcs.put(BUCKET, f"photos/{name}", open(os.path.join(src, "c0", name), "rb").read())
  gcs.put(BUCKET, "photos/.hidden.png", b"x")
  gcs.put(BUCKET, "photos/notes.txt", b"not an image")
  folder = pipeline.image_folder_source(f"gs://{BUCKET}/photos", 32)
  assert folder.names == ["0.png", "2.png", "4.png"] and [n for n, _ in folder.skipped] == ["notes.txt"]
  # An image another writer replaces after the listing is read whole (no stale listing sizes).
  bigger = io.BytesIO()
  Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(bigger, "PNG", compress_level=0)
  gcs.put(BUCKET, "photos/2.png", bigger.getvalue())
  assert float(folder[1]["image"].mean()) == pytest.approx(7 / 127.5 - 1)
  # Complete or refused on the bucket too.
  shard1 = f"data/ds/{records.shard_name(1, 3)}"
  saved = gcs.read(BUCKET, shard1)
  gcs.delete(BUCKET, shard1)
  with pytest.raises(DataError, match=f"gs://{BUCKET}/{shard1}: missing"):
    pipeline.make_source(cfg, "train")
  gcs.put(BUCKET, shard1, saved[:len(saved) - 10])
  with pytest.raises(DataError, match=f"gs://{BUCKET}/{shard1}: not a complete ArrayRecord"):
    pipeline.make_source(cfg, "train")
  gcs.put(BUCKET, shard1, saved)
  gcs.put(BUCKET, "data/ds/data-00009-of-00010.array_record", saved)
  with pytest.raises(DataError, match="data-00009-of-00010.array_record: unexpected shard"):
    pipeline.make_source(cfg, "train")
  gcs.delete(BUCKET, "data/ds/data-00009-of-00010.array_record")
  assert len(pipeline.make_source(cfg, "train")) == 6
  # A shard writer that fails uploads nothing.
  with pytest.raises(RuntimeError):
    with records.ShardWriter(f"gs://{BUCKET}/data/broken/{records.shard_name(0, 1)}") as w:
      w.write(b"x", 0)
      raise RuntimeError("crash")
  assert gcs.names(prefix="data/broken") == []


def test_local_only_tools_refuse_bucket_paths_in_one_line(gcs, tmp_path, in_tmp_cwd, capsys):
  from gigatok_jax.api import sources
  from gigatok_jax.config import validate
  from gigatok_jax.convert import cli, weight_files
  from gigatok_jax.weights import env
  from helpers import load_recipe
  assert cli.main(["--src", f"gs://{BUCKET}/x.pt", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: python -m gigatok_jax.convert: gs://") and "\n" not in err
  with pytest.raises(UserError, match="not on a local disk"):
    weight_files.read_metadata(f"gs://{BUCKET}/lpips.safetensors")
  with pytest.raises(UserError, match="weights cache"):
    env.cache_root(f"gs://{BUCKET}/cache")
  gcs.put(BUCKET, "w/model.pt", b"weights")
  with pytest.raises(UserError, match="converting an official weight file"):
    sources.run_directory(f"gs://{BUCKET}/w/model.pt")
  with pytest.raises(UserError, match="no such run directory"):
    sources.run_directory(f"gs://{BUCKET}/w/none")
  with pytest.raises(ConfigError, match="eval.inception_path.*local disks only"):
    cfg = load_recipe("gpt_b_probe")
    cfg.data.eval_codes_path = "x"
    cfg.eval.fid_reference = f"gs://{BUCKET}/w/model.pt"      # a gs:// file is accepted here
    cfg.eval.inception_path = f"gs://{BUCKET}/inception.safetensors"
    validate.check_ar_probe_inputs(cfg)
  cfg.eval.fid_reference = f"gs://{BUCKET}/w/missing.npz"
  with pytest.raises(ConfigError, match="eval.fid_reference.*not found"):
    validate.check_ar_probe_inputs(cfg)
  with pytest.raises(ConfigError, match="prepare_output.*local disks only"):
    prepare.prepare_imagenet2012(str(tmp_path), f"gs://{BUCKET}/imagenet")


# --------------------------------------------------------------------------------- the whole chain
TOK, GPT = f"gs://{BUCKET}/run", f"gs://{BUCKET}/gpt_run"


def _tokenizer_config(total_steps):
  from helpers import load_recipe
  c = load_recipe("demo_ar", "tokenizer")
  c.model.update(dict(enc_width=64, enc_layers=1, dec_width=64, dec_layers=1, distill_depth=1))
  c.total_steps = total_steps
  c.checkpoint_every_steps = 2
  c.image_every_steps = 2
  c.eval_num_images = 8
  c.global_batch_size = 8
  c.eval.num_images = 8
  c.eval.batch_size = 8
  c.mesh.data = -1             # the modes run on every device (8 CPU devices under pytest)
  return c


def _gpt_config():
  from helpers import load_recipe
  c = load_recipe("demo_ar")
  c.model.update(dict(width=32, layers=2, heads=2))
  c.tokenizer.workdir = TOK
  c.data.codes_path = f"{GPT}/codes/train"
  c.total_steps = 2
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 100
  c.global_batch_size = 8
  c.mesh.data = -1
  c.extract.batch_size = 16
  c.extract.images_per_shard = 32
  c.extract.max_images = 64                 # 2 shards
  c.sample.num_samples = 20
  c.sample.batch_size = 8                   # 3 batches, the last one partial
  c.sample.grid_images = 20
  return c


@pytest.mark.slow
def test_whole_chain_on_a_gs_workdir(gcs, tmp_path, in_tmp_cwd, repo_dir, capsys):
  import gigatok_jax
  from gigatok_jax import checkpointing, modes
  from gigatok_jax.metrics import fid
  from gigatok_jax.train import loop
  repo_before = set(os.listdir(repo_dir))
  modes.run_mode("train", _tokenizer_config(2), TOK, progress=False)
  assert checkpointing.Checkpointer(f"{TOK}/checkpoints", save_every_steps=1).latest_step() == 2
  capsys.readouterr()
  modes.run_mode("train", _tokenizer_config(4), TOK, progress=False)
  assert f"resuming from checkpoint step 2 in {TOK}" in capsys.readouterr().out
  assert gcs.names(prefix="run/checkpoints/2/") and gcs.names(prefix="run/checkpoints/4/")
  # The step-4 checkpoint restores from the bucket: a third run has nothing left to train.
  state = loop.train(_tokenizer_config(4), TOK, progress=False)
  assert int(state.step) == 4 and "nothing to train" in capsys.readouterr().out
  photos = f"gs://{BUCKET}/chain_photos"
  rng = np.random.default_rng(0)
  for i in range(3):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    gcs.put(BUCKET, f"chain_photos/{i}.png", buffer.getvalue())
  recon_cfg = _tokenizer_config(4)
  recon_cfg.data.reconstruct_input = photos
  result = modes.run_mode("reconstruct", recon_cfg, TOK, progress=False)
  assert result["num_images"] == 3 and result["grid"].startswith(f"{TOK}/reconstruct/")
  evaluated = modes.run_mode("eval", _tokenizer_config(4), TOK, progress=False)
  assert evaluated["json"] == f"{TOK}/eval/tokenizer_00000004.json"

  extract_cfg = _gpt_config()
  extract_cfg.data.codes_path = ""
  out = modes.run_mode("extract_codes", extract_cfg, GPT, progress=False)
  assert out["shards_written"] == 2
  modes.run_mode("train", _gpt_config(), GPT, progress=False)     # reads the codes from the bucket
  samples = modes.run_mode("sample", _gpt_config(), GPT, progress=False)
  assert samples["npz"].startswith(f"{GPT}/samples/samples_00000002_")
  reference = f"{GPT}/reference.npz"
  fid.write_reference(reference, mu=np.zeros(4), sigma=np.eye(4),
                      images=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))

  def features(images):       # stands in for the Inception network
    x = images.reshape(len(images), -1)[:, :4].astype(np.float64)
    return x, x[:, :2], np.tile(x[:, :1], (1, 10))   # (pool, spatial, logits)
  eval_cfg = _gpt_config()
  eval_cfg.eval.fid_reference = reference
  eval_cfg.eval.batch_size = 8
  scores = modes.run_mode("eval", eval_cfg, GPT, progress=False,
                          options={"features_fn": features})
  assert scores["num_samples"] == 20 and scores["samples"]["path"] == samples["npz"]
  assert scores["sample_settings"]["gpt_step"] == 2 and "precision" in scores

  # The Python API loads the bucket run like a local one.
  tok = gigatok_jax.Tokenizer.load(TOK)
  assert tok.encode(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)).shape == (2, 16)

  names = gcs.names()
  print("\n".join(names))
  run = {n[len("run/"):] for n in names if n.startswith("run/")}
  gpt = {n[len("gpt_run/"):] for n in names if n.startswith("gpt_run/")}
  assert {"config.json", "images/reconstruction_00000002.png", "reconstruct/grid_00000004.png",
          "reconstruct/metrics_00000004.json", "eval/tokenizer_00000004.json"} <= run
  assert any(n.startswith("events.out.tfevents.") for n in run)
  assert any(n.startswith("checkpoints/4/") for n in run)
  assert {"config.json", "codes/train/metadata.json", "codes/train/codes-00000-of-00002.array_record",
          "codes/train/codes-00001-of-00002.array_record", "reference.npz"} <= gpt
  assert any(n.startswith("checkpoints/2/") for n in gpt)
  assert any(n.startswith("samples/grid_") for n in gpt)
  assert any(n.startswith("eval/gpt_00000002_") for n in gpt)
  assert not any(".tmp" in n for n in names)
  assert set(os.listdir(repo_dir)) == repo_before
  assert not os.path.exists(os.path.join(repo_dir, "gs:"))
  assert len(codes_lib.check_shards(f"{GPT}/codes/train", "data.codes_path")) == 2
