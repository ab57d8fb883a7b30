"""TFDS builders: array_record round trip, reuse, interruption, bad images, modes, real data."""

import io
import pathlib
import sys
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxreid import data
from jaxreid.data import images
from test_data_layouts import TINY_MARKET, pixel_image, write_market, write_msmt17


def folder_config(root, name='folder', strict=False):
  return ml_collections.ConfigDict({'name': name, 'root': str(root), 'strict_filenames': strict})


def stored_dirs(tfds_dir) -> list[pathlib.Path]:
  """Finished builds (a dataset_info.json) under tfds_dir."""
  return sorted(p.parent for p in pathlib.Path(tfds_dir).rglob('dataset_info.json'))


def test_round_trip_labels_index_and_pixels(tmp_path):
  root = write_market(tmp_path / 'market')
  splits = data.load_splits(folder_config(root), tmp_path / 'tfds')
  recs = data.market_layout_records(root)
  for split, ds in splits.items():
    assert isinstance(ds, data.ReidSplit) and len(ds) == len(recs[split])
    assert ds.file_names == [r.file_name for r in recs[split]]
    np.testing.assert_array_equal(ds.pids, [r.pid for r in recs[split]])
    np.testing.assert_array_equal(ds.camids, [r.camid for r in recs[split]])
    assert ds.pids.dtype == np.int32 and ds.camids.dtype == np.int32
    for i, r in enumerate(recs[split]):
      # PNG sources are stored losslessly: the pixels come back exactly.
      np.testing.assert_array_equal(ds.image(i), np.asarray(Image.open(r.path).convert('RGB')))
      np.testing.assert_array_equal(np.asarray(ds.pil_image(i)), ds.image(i))
  assert splits['train'].num_cameras == 3 and splits['train'].name == 'folder'
  # Position == the stored `index` field (tfds keeps generation order: disable_shuffling).
  builder = data.prepare(folder_config(root), tmp_path / 'tfds')
  source = builder.as_data_source('gallery')
  assert [int(source[i]['index']) for i in range(len(source))] == [0, 1, 2]
  assert source[2]['file_name'] in (b'0006_c1s1_000013_00.jpg', '0006_c1s1_000013_00.jpg')
  with pytest.raises(IndexError, match='out of range'):
    splits['query'].image(2)


def test_second_build_is_reused_and_a_changed_folder_is_rebuilt(tmp_path):
  root = write_market(tmp_path / 'market')
  tfds_dir = tmp_path / 'tfds'
  first = data.load_split(folder_config(root), 'train', tfds_dir)
  [built] = stored_dirs(tfds_dir)
  stamp = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
  again = data.load_split(folder_config(root), 'train', tfds_dir)
  assert again.data_dir == first.data_dir == built
  assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == stamp
  Image.fromarray(pixel_image(99)).save(root / 'bounding_box_train' / '0003_c1s1_000020_00.jpg',
                                        format='PNG')
  changed = data.load_split(folder_config(root), 'train', tfds_dir)
  assert changed.data_dir != built and len(changed) == len(first) + 1
  assert len(stored_dirs(tfds_dir)) == 2


def test_interrupted_build_leaves_nothing_that_is_reused(tmp_path, monkeypatch):
  root = write_market(tmp_path / 'market')
  tfds_dir = tmp_path / 'tfds'
  real_encode = images.encode_for_store_with_size
  calls = []

  def dying_encode(path):
    calls.append(path)
    if len(calls) == 3:
      raise KeyboardInterrupt  # the user presses ^C in the middle of the build
    return real_encode(path)

  monkeypatch.setattr(images, 'encode_for_store_with_size', dying_encode)
  with pytest.raises(KeyboardInterrupt):
    data.load_split(folder_config(root), 'train', tfds_dir)
  assert not stored_dirs(tfds_dir)
  assert not [p for p in tfds_dir.rglob('*') if 'incomplete' in p.name]
  monkeypatch.setattr(images, 'encode_for_store_with_size', real_encode)
  assert len(data.load_split(folder_config(root), 'train', tfds_dir)) == 4


def test_build_killed_midway_leaves_no_incomplete_folder_behind(tmp_path):
  root = write_market(tmp_path / 'market')
  tfds_dir = tmp_path / 'tfds'
  built = pathlib.Path(data.load_split(folder_config(root), 'train', tfds_dir).data_dir)
  import shutil
  shutil.rmtree(built)
  # What tfds leaves when the process is SIGKILLed mid-build.
  stale = built.parent / f'incomplete.ABC123_{built.name}'
  (stale / 'partial').mkdir(parents=True)
  assert len(data.load_split(folder_config(root), 'train', tfds_dir)) == 4
  assert not [p for p in tfds_dir.rglob('*') if 'incomplete' in p.name]


def test_image_warnings_name_the_file_once(tmp_path, monkeypatch):
  root = write_market(tmp_path / 'market')
  real_open = images._open_fully  # pylint: disable=protected-access

  def warning_open(data_bytes, name):
    buf = io.BytesIO(data_bytes)
    import warnings
    warnings.warn(f'image file {buf!r} has odd metadata', UserWarning)  # as PIL words it
    return real_open(data_bytes, name)

  monkeypatch.setattr(images, '_open_fully', warning_open)
  with pytest.warns(data.DataWarning) as record:
    data.load_split(folder_config(root), 'train', tmp_path / 'tfds')
  noted = [str(w.message) for w in record if 'odd metadata' in str(w.message)]
  # One warning per split, naming the files, nothing else about them.
  assert [n.split('(')[1].split(')')[0] for n in noted] == ['train', 'query', 'gallery'], noted
  assert all('image warning(s)' in n and 'BytesIO' not in n for n in noted)
  assert 'image file 0001_c1s1_000001_00.jpg has odd metadata' in noted[0]


def test_huge_image_is_named_in_a_warning(tmp_path):
  root = write_market(tmp_path / 'market')
  Image.new('RGB', (images.LARGE_SIDE + 100, 1000), (90, 30, 60)).save(
      root / 'bounding_box_train' / '0003_c1s1_000040_00.jpg', format='JPEG')
  with pytest.warns(data.DataWarning, match=r'0003_c1s1_000040_00.jpg \(2100x1000\)'):
    data.load_split(folder_config(root), 'train', tmp_path / 'tfds')


def test_local_build_does_not_announce_a_download(tmp_path, capsys):
  root = write_market(tmp_path / 'market')
  data.load_split(folder_config(root), 'train', tmp_path / 'tfds')
  out = capsys.readouterr().out
  assert 'Downloading' not in out and 'nothing is downloaded' in out


def test_corrupt_images_are_skipped_named_and_counted(tmp_path):
  root = write_market(tmp_path / 'market')
  train = root / 'bounding_box_train'
  good = io.BytesIO()
  Image.fromarray(pixel_image(5, 64, 32)).save(good, format='JPEG')
  (train / '0003_c1s1_000030_00.jpg').write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
  (train / '0003_c2s1_000031_00.jpg').write_bytes(b'this is not an image')
  (train / '0004_c2s1_000032_00.jpg').write_bytes(b'')
  with pytest.warns(data.DataWarning) as record:
    ds = data.load_split(folder_config(root), 'train', tmp_path / 'tfds')
  corrupt = [str(w.message) for w in record if 'unreadable' in str(w.message)]
  assert len(corrupt) == 1 and '\n' not in corrupt[0]
  assert 'skipped 3 unreadable image(s)' in corrupt[0]
  assert '0003_c1s1_000030_00.jpg' in corrupt[0]  # the truncated one is named
  assert len(ds) == 4 and len(ds.skipped) == 3
  assert all(ds.image(i).shape == (16, 8, 3) for i in range(len(ds)))


def test_a_split_with_only_unreadable_images_is_an_error(tmp_path):
  root = write_market(tmp_path / 'market')
  for path in (root / 'query').iterdir():
    path.write_bytes(b'\xff\xd8\xff garbage')
  with pytest.warns(data.DataWarning), pytest.raises(data.DataError, match='query split has no '
                                                                            'readable images'):
    data.load_split(folder_config(root), 'query', tmp_path / 'tfds')
  assert not stored_dirs(tmp_path / 'tfds')


def reference_rgb(image: Image.Image) -> np.ndarray:
  """Independent conversion: what each mode's pixels mean in RGB."""
  a = np.asarray(image)
  if image.mode == 'L':
    return np.repeat(a[..., None], 3, -1)
  if image.mode == 'RGBA':
    return a[..., :3]
  if image.mode == 'I;16':
    return np.repeat(np.rint(a / 257.0).astype(np.uint8)[..., None], 3, -1)
  if image.mode == 'P':
    palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
    return palette[a]
  raise AssertionError(image.mode)


def test_grayscale_rgba_palette_16bit_cmyk_and_odd_sizes_become_rgb(tmp_path):
  rng = np.random.default_rng(0)
  gray = Image.fromarray(rng.integers(0, 256, (13, 7), dtype=np.uint8), 'L')
  rgba = Image.fromarray(rng.integers(0, 256, (9, 30, 4), dtype=np.uint8), 'RGBA')
  pal = Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).quantize(16)
  deep = Image.fromarray(rng.integers(0, 65536, (11, 5), dtype=np.uint16))
  assert deep.mode.startswith('I;16')
  cmyk = Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).convert('CMYK')
  tiny = Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8))
  names = {'0001_c1s1_000001_00.png': gray, '0001_c2s1_000002_00.png': rgba,
           '0002_c1s1_000003_00.png': pal, '0002_c2s1_000004_00.png': deep,
           '0003_c1s1_000005_00.jpg': cmyk, '0003_c2s1_000006_00.png': tiny}
  root = write_market(tmp_path / 'market', dict(TINY_MARKET, bounding_box_train=[]))
  for name, image in names.items():
    image.save(root / 'bounding_box_train' / name)
  ds = data.load_split(folder_config(root), 'train', tmp_path / 'tfds')
  got = {name: ds.image(i) for i, name in enumerate(ds.file_names)}
  assert all(g.dtype == np.uint8 and g.ndim == 3 and g.shape[2] == 3 for g in got.values())
  for name in ('0001_c1s1_000001_00.png', '0001_c2s1_000002_00.png', '0002_c1s1_000003_00.png',
               '0002_c2s1_000004_00.png'):
    reopened = Image.open(root / 'bounding_box_train' / name)
    np.testing.assert_array_equal(got[name], reference_rgb(reopened), err_msg=name)
  assert got['0003_c1s1_000005_00.jpg'].shape == (16, 8, 3)
  np.testing.assert_array_equal(got['0003_c2s1_000006_00.png'], np.asarray(tiny))


def test_msmt17_builder(tmp_path):
  root = write_msmt17(tmp_path / 'MSMT17_V1')
  splits = data.load_splits(folder_config(root, 'msmt17'), tmp_path / 'tfds')
  assert {k: len(v) for k, v in splits.items()} == {'train': 3, 'query': 1, 'gallery': 2}
  assert splits['train'].num_cameras == 15
  assert splits['train'].image(1).shape == (16, 8, 3)
  assert splits['train'].data_dir.parts[-3] == 'msmt17'


def test_builders_have_manual_download_instructions(tmp_path):
  for cls in (data.Market1501, data.DukemtmcReid, data.Msmt17, data.ReidFolder):
    assert 'by hand' in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  # tfds' own manual_dir route works as well as root=.
  import tensorflow_datasets as tfds
  root = write_market(tmp_path / 'market')
  builder = data.Market1501(data_dir=tmp_path / 'tfds')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  assert len(builder.as_data_source('query')) == 2


def test_user_errors_are_one_line(tmp_path):
  cfg = folder_config(tmp_path / 'market')
  with pytest.raises(data.DataError, match='tfds_dir is empty'):
    data.load_split(cfg, 'train', '')
  with pytest.raises(data.DataError, match="split 'val'"):
    data.load_split(cfg, 'val', tmp_path)
  with pytest.raises(data.DataError, match="data set name 'cuhk'"):
    data.load_split(folder_config(tmp_path, 'cuhk'), 'train', tmp_path)
  with pytest.raises(data.DataError, match='--config.data.root'):
    data.load_split(folder_config('', 'market1501'), 'train', tmp_path)
  with pytest.raises(data.DataError, match='not a Market-1501 layout'):
    data.load_split(folder_config(tmp_path, 'market1501'), 'train', tmp_path / 'tfds')
  with pytest.raises(data.DataError, match='synthetic_config'):
    data.load_split(folder_config('', 'synthetic'), 'train', tmp_path / 'tfds')


def test_synthetic_goes_through_the_folder_builder(tmp_path, monkeypatch):
  """'synthetic' writes a Market folder next to tfds_dir and reads it like real data."""
  calls = []

  def fake_writer(root, **kwargs):
    calls.append((pathlib.Path(root), kwargs))
    return write_market(root)

  from jaxreid.data import synthetic  # the real one, for its config -> parameters helper
  module = types.ModuleType('jaxreid.data.synthetic')
  module.write_market_folder = fake_writer
  module.params_of = synthetic.params_of
  monkeypatch.setitem(sys.modules, 'jaxreid.data.synthetic', module)
  monkeypatch.setattr(data, 'synthetic', module, raising=False)
  syn = ml_collections.ConfigDict(dict(seed=3, num_cameras=3, num_train_ids=2, num_test_ids=2,
                                       images_per_id=2, height=16, width=8))
  tfds_dir = tmp_path / 'run' / 'tfds'
  train = data.load_split(ml_collections.ConfigDict({'name': 'synthetic'}), 'train', tfds_dir,
                          synthetic_config=syn)
  val = data.load_split(ml_collections.ConfigDict({'name': 'synthetic_val', 'root': ''}), 'query',
                        tfds_dir, synthetic_config=syn)
  assert [c[0] for c in calls] == [tmp_path / 'run' / 'synthetic' / 'synthetic',
                                   tmp_path / 'run' / 'synthetic' / 'synthetic_val']
  assert [c[1]['seed'] for c in calls] == [3, 1003] and calls[0][1]['num_cameras'] == 3
  assert len(train) == 4 and len(val) == 2 and train.name == 'synthetic'
  assert train.data_dir.parts[-3] == 'reid_folder'


def test_cuhk03_build(cuhk03_root, tmp_path_factory):
  splits = data.load_splits(folder_config(cuhk03_root), tmp_path_factory.mktemp('tfds'))
  assert {k: len(v) for k, v in splits.items()} == {'train': 7239, 'query': 200, 'gallery': 738}
  train = splits['train']
  assert len(np.unique(train.pids)) == 743 and train.num_cameras == 2
  assert set(np.unique(splits['gallery'].camids)) == {0, 1}
  i = train.file_names.index('0001_c2s1_000005_00.jpg')
  source = cuhk03_root / 'bounding_box_train' / train.file_names[i]
  np.testing.assert_array_equal(train.image(i), np.asarray(Image.open(source)))
  assert train.image(i).shape == (128, 64, 3)
  data.check_cameras(train.camids, camstyle_enabled=True)
