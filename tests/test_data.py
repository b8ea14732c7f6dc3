"""Tests of gigatok_jax.data: demo source, record format, prepare, grain pipeline, tfds path."""

import io
import json
import os
import re

from absl import flags
import grain
import numpy as np
from PIL import Image
import pytest

from gigatok_jax.config import validate
from gigatok_jax.data import demo
from gigatok_jax.data import pipeline
from gigatok_jax.data import prepare
from gigatok_jax.data import records
from gigatok_jax.data import transforms
from gigatok_jax.errors import ConfigError, DataError

flags.FLAGS.mark_as_parsed()

S = 32  # image size used throughout: small keeps the suite fast.


def _cfg(**overrides):
  cfg = pipeline.default_data_config()
  cfg.image_size = S
  cfg.read_threads = 2
  cfg.update(overrides)
  return cfg


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _save(path, array, fmt, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt, **kwargs)


def _solid(value, h=40, w=56):
  """A solid image whose grey level encodes `value`; any crop or flip keeps the value."""
  return np.full((h, w, 3), value, np.uint8)


# ------------------------------------------------------------------------------------------- demo

def test_demo_source_yields_real_varied_photos():
  names = demo.demo_photo_names()
  assert {'astronaut', 'coffee', 'chelsea', 'rocket'} <= set(names)
  assert len(names) >= 8
  train = demo.DemoSource('train', S, num_samples=50)
  assert len(train) == 50
  recs = [train[i] for i in range(len(names) * 2)]
  for i, r in enumerate(recs):
    assert r['image'].shape == (S, S, 3) and r['image'].dtype == np.uint8
    assert r['label'] == i % len(names)
    assert r['image'].std() > 5  # real texture, not a blank
  # Same photo, different index: a different crop. Same index: the same crop.
  assert not np.array_equal(recs[0]['image'], recs[len(names)]['image'])
  np.testing.assert_array_equal(train[3]['image'], recs[3]['image'])
  # Different photos look different (mean colours differ).
  means = np.array([r['image'].reshape(-1, 3).mean(0) for r in recs[:len(names)]])
  assert np.ptp(means, axis=0).max() > 40
  evals = demo.DemoSource('eval', S)
  assert len(evals) == 2 * len(names)
  assert sorted({evals[i]['label'] for i in range(len(evals))}) == list(range(len(names)))
  with pytest.raises(IndexError):
    train[50]


def test_demo_photos_match_skimage_loader():
  skdata = pytest.importorskip('skimage.data')
  np.testing.assert_array_equal(demo.demo_photos()[0], skdata.astronaut())


# ---------------------------------------------------------------------------------- record format

def test_record_roundtrip_and_decoding_modes():
  rgb = (np.arange(12 * 10 * 3) % 251).astype(np.uint8).reshape(12, 10, 3)
  raw = records.encode_record(records.encode_png(rgb), 7, 'a/b.png')
  rec = records.decode_record(raw)
  assert rec['label'] == 7 and rec['name'] == 'a/b.png'
  np.testing.assert_array_equal(records.decode_image(rec['image']), rgb)
  for mode in ('L', 'RGBA', 'CMYK', 'P', 'I;16'):
    buf = io.BytesIO()
    fmt = 'JPEG' if mode == 'CMYK' else 'PNG'
    Image.new(mode, (9, 5)).save(buf, format=fmt)
    out = records.decode_image(buf.getvalue())
    assert out.shape == (5, 9, 3) and out.dtype == np.uint8, mode
  with pytest.raises(ValueError):
    records.decode_record(b'\x00garbage')


def test_corrupt_record_raises_data_error(tmp_path):
  path = str(tmp_path / 'bad.array_record')
  with records.ShardWriter(path) as w:
    w.write(b'not an image', 0)
  src = records.ImageRecordSource([path])
  with pytest.raises(DataError, match='record 0'):
    src[0]
  with pytest.raises(ConfigError) as e:
    validate.check_data_config(_cfg(source='array_record', train_path=path), 4,
                                  splits=('train',), process_count=1)
  assert e.value.key == 'data.train_path'


# ---------------------------------------------------------------------------------------- prepare

def _make_folder(root):
  """Two classes of textured images plus bad files; returns {relative path: original array}."""
  rng = np.random.default_rng(0)
  good = {}
  for c, cls in enumerate(('zebra', 'ant')):  # sorted: ant -> 0, zebra -> 1
    for i in range(4):
      arr = rng.integers(0, 256, (30 + 2 * i, 44, 3), dtype=np.uint8)
      arr[..., 0] = 200 if cls == 'ant' else 20  # red channel encodes the class
      fmt, ext = (('PNG', 'png'), ('BMP', 'bmp'), ('PNG', 'png'), ('JPEG', 'jpg'))[i]
      rel = os.path.join(cls, f'img{i}.{ext}')
      _save(os.path.join(root, rel), arr, fmt)
      good[rel] = arr
  _save(os.path.join(root, 'ant', 'sub', 'deep.png'), _solid(200), 'PNG')
  good[os.path.join('ant', 'sub', 'deep.png')] = _solid(200)
  # A truncated JPEG, a text file, a file outside the class folders and a hidden file.
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format='JPEG')
  with open(os.path.join(root, 'zebra', 'truncated.jpg'), 'wb') as f:
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
  with open(os.path.join(root, 'ant', 'notes.txt'), 'w') as f:
    f.write('not an image')
  with open(os.path.join(root, 'README'), 'w') as f:
    f.write('top-level file')
  with open(os.path.join(root, 'ant', '.hidden.png'), 'w') as f:
    f.write('ignored')
  return good


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('images'))
  out = str(tmp_path_factory.mktemp('prepared') / 'ds')
  good = _make_folder(root)
  cfg = _cfg(prepare_source='image_folder', prepare_input=root, prepare_output=out,
             prepare_num_shards=3)
  summary = prepare.run_prepare(cfg, progress=False)
  return {'root': root, 'out': out, 'good': good, 'summary': summary, 'cfg': cfg}


def test_prepare_image_folder_writes_shards_and_skips_bad_files(prepared):
  summary, out, good = prepared['summary'], prepared['out'], prepared['good']
  assert summary['num_records'] == len(good) == 9
  assert summary['num_classes'] == 2
  assert summary['num_skipped'] == 3
  assert {'zebra/truncated.jpg', 'ant/notes.txt', 'README'} == set(summary['skipped_files'])
  shards = records.find_shard_files(out)
  assert [os.path.basename(p) for p in shards] == [records.shard_name(k, 3) for k in range(3)]
  meta = records.read_metadata(out)
  assert meta['class_names'] == ['ant', 'zebra']
  assert meta['class_counts'] == {'ant': 5, 'zebra': 4}
  assert sum(s['num_records'] for s in meta['shards']) == 9
  assert {s['file'] for s in meta['skipped']} == set(summary['skipped_files'])
  src = records.ImageRecordSource(shards)
  assert len(src) == 9
  seen = set()
  for i in range(len(src)):
    raw = src.read_raw(i)
    rec = src[i]
    original = good[raw['name']]
    seen.add(raw['name'])
    assert rec['label'] == (0 if raw['name'].startswith('ant') else 1)
    assert rec['image'].shape == original.shape and rec['image'].dtype == np.uint8
    if raw['name'].endswith('.jpg'):  # JPEG bytes are stored as they are (lossy vs the array)
      with open(os.path.join(prepared['root'], raw['name']), 'rb') as f:
        assert raw['image'] == f.read()
    else:  # PNG kept, BMP re-encoded as PNG: lossless
      np.testing.assert_array_equal(rec['image'], original)
      assert raw['image'][:4] == b'\x89PNG'
  assert seen == set(good)


def test_prepare_refuses_to_overwrite_and_flat_folder_is_one_class(prepared, tmp_path):
  with pytest.raises(ConfigError) as e:
    prepare.run_prepare(prepared['cfg'], progress=False)
  assert e.value.key == 'data.prepare_output'
  flat = tmp_path / 'flat'
  for i in range(3):
    _save(str(flat / f'{i}.png'), _solid(10 * i), 'PNG')
  summary = prepare.run_prepare(_cfg(prepare_input=str(flat), prepare_output=str(tmp_path / 'o'),
                                     prepare_num_shards=8), progress=False)
  assert summary['num_records'] == 3 and summary['num_classes'] == 1 and summary['num_shards'] == 3
  src = pipeline.make_source(_cfg(source='array_record', train_path=str(tmp_path / 'o')), 'train')
  assert [src[i]['label'] for i in range(3)] == [0, 0, 0]


def test_prepare_bad_config_and_missing_imagenet_tars(tmp_path):
  with pytest.raises(ConfigError) as e:
    prepare.run_prepare(_cfg(prepare_source='nope', prepare_input='x', prepare_output='y'))
  assert e.value.key == 'data.prepare_source'
  with pytest.raises(ConfigError) as e:
    prepare.run_prepare(_cfg(prepare_input=str(tmp_path / 'missing'), prepare_output='y'))
  assert e.value.key == 'data.prepare_input'
  (tmp_path / 'ILSVRC2012_img_val.tar').write_bytes(b'')
  cfg = _cfg(prepare_source='imagenet2012', prepare_input=str(tmp_path),
             prepare_output=str(tmp_path / 'out'))
  with pytest.raises(DataError) as e:
    prepare.run_prepare(cfg)
  assert 'ILSVRC2012_img_train.tar' in str(e.value) and str(tmp_path) in str(e.value)
  assert 'missing ILSVRC2012_img_val.tar' not in str(e.value)


# ------------------------------------------------------------------------------- train pipeline

@pytest.fixture(scope='module')
def id_dataset(tmp_path_factory):
  """10 solid images; image i has grey level 20 * i + 10 and label i (one class folder each)."""
  root = tmp_path_factory.mktemp('ids')
  for i in range(10):
    _save(str(root / f'c{i:02d}' / 'x.png'), _solid(20 * i + 10, 36 + i, 50), 'PNG')
  out = str(tmp_path_factory.mktemp('ids_out') / 'ds')
  prepare.prepare_image_folder(str(root), out, 2, progress=False)
  return out


@pytest.fixture(scope='module')
def noise_dataset(tmp_path_factory):
  """6 noise images (so that different crops/flips give different pixels)."""
  rng = np.random.default_rng(1)
  items = [(records.encode_png(rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)), i % 3,
            f'{i}') for i in range(6)]
  out = str(tmp_path_factory.mktemp('noise'))
  records.write_shards(items, out, 2)
  return out


def test_array_record_train_batches(id_dataset):
  cfg = _cfg(source='array_record', train_path=id_dataset)
  it = pipeline.make_train_iterator(cfg, global_batch_size=5, seed=0, process_index=0,
                                    process_count=1)
  assert isinstance(it, grain.DatasetIterator)
  batches = _take(it, 4)
  for b in batches:
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (5, S, S, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (5,) and b['label'].dtype == np.int32
    assert b['image'].min() >= -1.0 and b['image'].max() <= 1.0
    # Each image is solid with grey 20 * label + 10: labels travel with their images.
    expected = (20 * b['label'] + 10) / 127.5 - 1.0
    np.testing.assert_allclose(b['image'].mean(axis=(1, 2, 3)), expected, atol=1e-5)
  labels = np.concatenate([b['label'] for b in batches])
  # Each epoch (10 records) is a permutation; the second epoch is reshuffled.
  assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:20]) == list(range(10))
  assert not np.array_equal(labels[:10], labels[10:20])


def test_augmentation_deterministic_per_seed(noise_dataset):
  cfg = _cfg(source='array_record', train_path=noise_dataset)

  def first(seed, n=3):
    return _take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=seed,
                                              process_index=0, process_count=1), n)

  a, b, c = first(7), first(7), first(8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not all(np.array_equal(x['image'], z['image']) for x, z in zip(a, c))


def test_random_resized_crop_and_flip_follow_the_rng():
  image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
  crops = [transforms.random_resized_crop(image, 32, 1.25, np.random.default_rng(s))
           for s in range(20)]
  assert all(c.shape == (32, 32, 3) for c in crops)
  assert len({c.tobytes() for c in crops}) > 10
  again = transforms.random_resized_crop(image, 32, 1.25, np.random.default_rng(3))
  np.testing.assert_array_equal(again, crops[3])
  flips = [transforms.random_flip(image, np.random.default_rng(s)) for s in range(40)]
  flipped = sum(np.array_equal(f, image[:, ::-1]) for f in flips)
  assert 5 < flipped < 35 and flipped + sum(np.array_equal(f, image) for f in flips) == 40
  # Scale 1.0: short side resized to exactly 32, so a 32-high image is cropped, not resized.
  tall = image[:32]
  crop = transforms.random_resized_crop(tall, 32, 1.0, np.random.default_rng(0))
  assert any(np.array_equal(crop, tall[:, x:x + 32]) for x in range(90 - 32 + 1))


def test_center_crop_takes_the_centre():
  image = np.zeros((64, 96, 3), np.uint8)
  image[:, 32:64] = 255  # the centre 64x64 window is black | white | black in thirds
  out = transforms.center_crop(image, 32)
  assert out.shape == (32, 32, 3)
  assert out[:, 12:20].min() > 200 and out[:, :5].max() < 50 and out[:, -5:].max() < 50


def test_iterator_state_roundtrip_is_bit_identical(noise_dataset):
  cfg = _cfg(source='array_record', train_path=noise_dataset)

  def make():
    return pipeline.make_train_iterator(cfg, global_batch_size=4, seed=5, process_index=0,
                                        process_count=1)

  it = make()
  _take(it, 3)  # 12 records: past the first epoch of 6
  state = it.get_state()
  expected = _take(it, 4)
  restored = make()
  restored.set_state(state)
  for x, y in zip(expected, _take(restored, 4)):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_iterator_checkpoint_with_orbax(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  cfg = _cfg(demo_num_samples=30)
  it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=1, process_index=0,
                                    process_count=1)
  _take(it, 2)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(str(tmp_path / 'it'), args=grain.checkpoint.CheckpointSave(it))
  expected = next(it)
  fresh = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=1, process_index=0,
                                       process_count=1)
  checkpointer.restore(str(tmp_path / 'it'), args=grain.checkpoint.CheckpointRestore(fresh))
  np.testing.assert_array_equal(next(fresh)['image'], expected['image'])


def test_process_sharding_is_disjoint_and_matches_single_process(id_dataset):
  cfg = _cfg(source='array_record', train_path=id_dataset)

  def labels(index, count, global_batch, n):
    it = pipeline.make_train_iterator(cfg, global_batch_size=global_batch, seed=3,
                                      process_index=index, process_count=count)
    return [b['label'] for b in _take(it, n)]

  single = labels(0, 1, 4, 5)       # 5 global batches of 4 = 2 epochs
  p0, p1 = labels(0, 2, 4, 5), labels(1, 2, 4, 5)
  assert all(len(b) == 2 for b in p0 + p1)
  # Process p holds positions p, p + 2, ... of the global stream: interleave them back.
  stream = np.concatenate([np.stack([a, b], axis=1).reshape(-1) for a, b in zip(p0, p1)])
  first_epoch = stream[:10]
  assert sorted(first_epoch) == list(range(10))  # disjoint, and together the whole epoch
  for g, a, b in zip(single, p0, p1):  # global batch k holds the same records
    assert sorted(g) == sorted(np.concatenate([a, b]))
  with pytest.raises(ConfigError):
    pipeline.make_train_iterator(cfg, global_batch_size=5, seed=0, process_index=0,
                                 process_count=2)


# -------------------------------------------------------------------------------- eval pipeline

def test_eval_iterator_is_finite_deterministic_and_padded():
  cfg = _cfg()
  n = len(demo.DemoSource('eval', S))
  batches = list(pipeline.make_eval_iterator(cfg, batch_size=8, process_index=0, process_count=1))
  assert len(batches) == pipeline.num_eval_batches(n, 8)
  assert all(b['image'].shape == (8, S, S, 3) and b['mask'].dtype == bool for b in batches)
  assert sum(int(b['mask'].sum()) for b in batches) == n
  last = batches[-1]
  assert np.all(last['image'][~last['mask']] == -1.0)
  again = list(pipeline.make_eval_iterator(cfg, batch_size=8, process_index=0, process_count=1))
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x['image'], y['image'])
  few = list(pipeline.make_eval_iterator(cfg, batch_size=4, num_images=6, process_index=0,
                                         process_count=1))
  assert len(few) == 2 and sum(int(b['mask'].sum()) for b in few) == 6


def test_eval_iterator_process_sharding(id_dataset):
  cfg = _cfg(source='array_record', eval_path=id_dataset)
  per_process = [list(pipeline.make_eval_iterator(cfg, batch_size=4, process_index=p,
                                                  process_count=2)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 3  # ceil(10 / 4), same on every process
  real = [int(l) for bs in per_process for b in bs for l, m in zip(b['label'], b['mask']) if m]
  assert sorted(real) == list(range(10))


# ------------------------------------------------------------------------------------ validation

def test_validate_data_config_names_the_key(id_dataset, tmp_path):
  assert validate.check_data_config(_cfg(), 8, process_count=1) == {
      'train': 10000, 'eval': 2 * len(demo.demo_photo_names())}
  cases = [
      (dict(source='webdataset'), 'data.source'),
      (dict(image_size=40), 'data.image_size'),
      (dict(image_size=0), 'data.image_size'),
      (dict(crop_max_scale=0.5), 'data.crop_max_scale'),
      (dict(worker_count=-1), 'data.worker_count'),
      (dict(source='array_record', train_path=str(tmp_path / 'nothing' / '*.array_record')),
       'data.train_path'),
      (dict(source='array_record', train_path=str(tmp_path)), 'data.train_path'),
      (dict(source='array_record', train_path=id_dataset, eval_path=''), 'data.eval_path'),
      (dict(source='tfds', tfds_name='no_such_dataset_xyz'), 'data.tfds_name'),
      (dict(source='tfds', tfds_data_dir=str(tmp_path)), 'data.tfds_data_dir'),
  ]
  for overrides, key in cases:
    with pytest.raises(ConfigError) as e:
      validate.check_data_config(_cfg(**overrides), 8, process_count=1)
    assert e.value.key == key, overrides
  with pytest.raises(ConfigError, match='no ArrayRecord files match'):
    validate.check_data_config(_cfg(source='array_record', train_path=str(tmp_path)), 8,
                                  splits=('train',), process_count=1)
  with pytest.raises(ConfigError) as e:
    validate.check_data_config(_cfg(), 6, process_count=4, batch_size_key='train.batch')
  assert e.value.key == 'train.batch'


# ------------------------------------------------------------------------------------------ tfds

def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  try:
    import tensorflow_datasets.testing  # pylint: disable=unused-import
  except ImportError as e:
    pytest.skip(f'tfds.testing does not import here: {e}')
  cfg = _cfg(source='tfds', tfds_name='imagenet2012', tfds_data_dir='')
  with tfds.testing.mock_data(num_examples=12):
    assert len(pipeline.make_source(cfg, 'eval')) == 12
    it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                      process_count=1)
    b = next(it)
    eval_batches = list(pipeline.make_eval_iterator(cfg, batch_size=8, process_index=0,
                                                    process_count=1))
  assert b['image'].shape == (4, S, S, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32 and (b['label'] >= 0).all() and (b['label'] < 1000).all()
  assert sum(int(e['mask'].sum()) for e in eval_batches) == 12


def _tiny_tfds_builder_class(tfds):
  class GigatokTestTinyImages(tfds.core.GeneratorBasedBuilder):
    """4 train / 3 validation PNG images of different sizes, written as ArrayRecord."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
          'label': tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(4), 'validation': self._generate_examples(3)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': records.encode_png(_solid(40 * i, 20 + 3 * i, 30)), 'label': i}

  return GigatokTestTinyImages


def test_tfds_source_from_a_prepared_array_record_dataset(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = _tiny_tfds_builder_class(tfds)(data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare()
  cfg = _cfg(source='tfds', tfds_name='gigatok_test_tiny_images', tfds_data_dir=str(tmp_path))
  assert validate.check_data_config(cfg, 2, process_count=1) == {'train': 4, 'eval': 3}
  batch = next(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                            process_count=1))
  np.testing.assert_allclose(batch['image'].mean(axis=(1, 2, 3)),
                             40 * batch['label'] / 127.5 - 1.0, atol=1e-5)
  cfg.tfds_eval_split = 'test'
  with pytest.raises(ConfigError) as e:
    pipeline.make_source(cfg, 'eval')
  assert e.value.key == 'data.tfds_eval_split'


# --------------------------------------------------------------------------------- reconstruct

def test_image_folder_source_skips_unreadable_files(tmp_path):
  _save(str(tmp_path / 'b.png'), _solid(255, 50, 80), 'PNG')
  _save(str(tmp_path / 'a.jpg'), _solid(0, 90, 40), 'JPEG')
  (tmp_path / 'c.png').write_bytes(b'\x89PNG broken')
  src = pipeline.image_folder_source(str(tmp_path), S)
  assert len(src) == 2 and src.names == ['a.jpg', 'b.png']
  assert [name for name, _ in src.skipped] == ['c.png']
  a, b = src[0], src[1]
  assert a['image'].shape == (S, S, 3) and a['image'].dtype == np.float32
  assert a['image'].max() < -0.95 and b['image'].min() > 0.95
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ConfigError) as e:
    pipeline.image_folder_source(str(empty), S, key='reconstruct.input_dir')
  assert e.value.key == 'reconstruct.input_dir'
  with pytest.raises(DataError):
    pipeline.image_folder_source(str(tmp_path / 'nope'), S)


def test_json_metadata_is_plain_json(prepared):
  with open(os.path.join(prepared['out'], records.METADATA_FILE)) as f:
    meta = json.load(f)
  assert meta['format'] == 'gigatok_jax.image_records' and meta['record_version'] == 1


# ------------------------------------------------------------------ datasets are complete or refused

def _check(path, split='train'):
  key = 'train_path' if split == 'train' else 'eval_path'
  return pipeline.make_source(_cfg(source='array_record', **{key: path}), split)


def _rewrite_with(path, n):
  """Replaces the shard at `path` by a valid ArrayRecord file holding its first `n` records."""
  src = records.ImageRecordSource([path])
  raws = [src.read_raw(i) for i in range(n)]
  os.remove(path)
  with records.ShardWriter(path) as w:
    for r in raws:
      w.write(r['image'], r['label'], r['name'])


@pytest.fixture
def prepared_copy(prepared, tmp_path):
  import shutil
  out = str(tmp_path / 'ds')
  shutil.copytree(prepared['out'], out)
  return out


def test_complete_dataset_records_its_shards_and_opens(prepared_copy):
  meta = records.read_metadata(prepared_copy)
  assert [s['file'] for s in meta['shards']] == [records.shard_name(k, 3) for k in range(3)]
  assert len(_check(prepared_copy)) == 9
  # A glob may select some shards on purpose: only those are checked.
  one = os.path.join(prepared_copy, records.shard_name(0, 3))
  assert len(_check(one)) == meta['shards'][0]['num_records']


def test_deleted_shard_is_refused_naming_it(prepared_copy):
  victim = os.path.join(prepared_copy, records.shard_name(1, 3))
  os.remove(victim)
  with pytest.raises(DataError, match=f'{re.escape(victim)}: missing') as e:
    _check(prepared_copy)
  assert '\n' not in str(e.value)
  # The config check says the same before anything compiles.
  with pytest.raises(DataError, match='missing'):
    validate.check_data_config(_cfg(source='array_record', train_path=prepared_copy), 4,
                               splits=('train',), process_count=1)


def test_truncated_shard_is_refused_naming_it(prepared_copy):
  victim = os.path.join(prepared_copy, records.shard_name(2, 3))
  data = open(victim, 'rb').read()
  with open(victim, 'wb') as f:
    f.write(data[:len(data) - 10])            # cut: the footer is gone
  with pytest.raises(DataError,
                     match=f'{re.escape(victim)}: not a complete ArrayRecord file') as e:
    _check(prepared_copy)
  assert '\n' not in str(e.value) and str(e.value).strip().endswith(')')
  # A valid file with fewer records than metadata.json lists (a shard replaced or cut short).
  os.remove(victim)
  with records.ShardWriter(victim) as w:
    w.write(records.encode_png(_solid(5)), 0, 'x')
  want = records.read_metadata(prepared_copy)['shards'][2]['num_records']
  with pytest.raises(DataError,
                     match=f'{re.escape(victim)}: holds 1 records but metadata.json lists {want}'):
    _check(prepared_copy)


def test_extra_shard_is_refused_naming_it(prepared_copy):
  import shutil
  extra = os.path.join(prepared_copy, 'data-00003-of-00004.array_record')
  shutil.copy(os.path.join(prepared_copy, records.shard_name(0, 3)), extra)
  with pytest.raises(DataError, match=f'{re.escape(extra)}: unexpected shard'):
    _check(prepared_copy)


def _codes_dir(root, num_images=5, per_shard=2):
  """A codes directory as --mode=extract_codes writes it: 3 shards of 2, 2 and 1 records."""
  from gigatok_jax import fileio
  from gigatok_jax.data import codes
  num_shards = -(-num_images // per_shard)
  os.makedirs(root, exist_ok=True)
  for k in range(num_shards):
    with records.ShardWriter(codes.shard_path(root, k, num_shards)) as w:
      for i in range(k * per_shard, min((k + 1) * per_shard, num_images)):
        w.write_raw(codes.encode_code_record(np.full((1, 4), i), i % 3))
  fileio.atomic_write_json(os.path.join(root, records.METADATA_FILE), {
      'format': 'gigatok_jax.codes.v1', 'num_images': num_images, 'num_shards': num_shards,
      'images_per_shard': per_shard, 'num_tokens': 4, 'vocab_size': 16, 'num_classes': 3})
  return root


def test_code_shards_are_complete_or_refused(tmp_path):
  from gigatok_jax.data import codes
  good = _codes_dir(str(tmp_path / 'good'))
  shards = codes.check_shards(good, 'data.codes_path')
  assert [s.num_records for s in shards] == [2, 2, 1]
  source = codes.CodeRecordSource(shards)
  assert len(source) == 5 and source[4]['codes'][0, 0] == 4

  deleted = _codes_dir(str(tmp_path / 'deleted'))
  victim = codes.shard_path(deleted, 1, 3)
  os.remove(victim)
  with pytest.raises(DataError, match=f'{re.escape(victim)}: missing: .* holds 2 of 3 shards'):
    codes.check_shards(deleted, 'data.codes_path')

  truncated = _codes_dir(str(tmp_path / 'truncated'))
  victim = codes.shard_path(truncated, 2, 3)
  data = open(victim, 'rb').read()
  with open(victim, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(DataError, match=f'{re.escape(victim)}: not a complete ArrayRecord file'):
    codes.check_shards(truncated, 'data.codes_path')
  short = _codes_dir(str(tmp_path / 'short'))
  victim = codes.shard_path(short, 0, 3)
  os.remove(victim)
  with records.ShardWriter(victim) as w:
    w.write_raw(codes.encode_code_record(np.zeros((1, 4)), 0))
  with pytest.raises(DataError,
                     match=f'{re.escape(victim)}: holds 1 records but its chunk has 2 images'):
    codes.check_shards(short, 'data.codes_path')

  extra = _codes_dir(str(tmp_path / 'extra'))
  stray = os.path.join(extra, 'codes-00005-of-00003.array_record')
  import shutil
  shutil.copy(codes.shard_path(extra, 0, 3), stray)
  with pytest.raises(DataError, match=f'{re.escape(stray)}: unexpected shard'):
    codes.check_shards(extra, 'data.codes_path')
  other = os.path.join(extra, 'data-00000-of-00001.array_record')
  os.rename(stray, other)
  with pytest.raises(DataError, match=f'{re.escape(other)}: unexpected shard'):
    codes.check_shards(extra, 'data.codes_path')
  # The GPT's training iterator runs the same checks.
  cfg = _cfg(codes_path=extra)
  with pytest.raises(DataError, match='unexpected shard'):
    codes.make_train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1)
