"""Folder layouts: Market-1501 / MSMT17 parsing, junk and distractors, one-line errors, warnings."""

import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxreid import data
from jaxreid.data import layouts

# Names per Market folder: 2 train ids over 2 cameras, junk (-1) and a distractor (0) in the
# gallery, a Thumbs.db as Market-1501 ships it.
TINY_MARKET = {
    'bounding_box_train': ['0001_c1s1_000001_00.jpg', '0001_c2s1_000002_00.jpg',
                           '0002_c1s1_000003_00.jpg', '0002_c3s1_000004_00.jpg'],
    'query': ['0005_c1s1_000010_00.jpg', '0006_c2s1_000011_00.jpg'],
    'bounding_box_test': ['0005_c2s1_000012_00.jpg', '0006_c1s1_000013_00.jpg',
                          '-1_c1s1_000014_00.jpg', '0000_c3s1_000015_00.jpg'],
}


def pixel_image(seed: int, height: int = 16, width: int = 8) -> np.ndarray:
  """A small random RGB image (the same for the same seed)."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_market(root, names=None, fmt='PNG') -> pathlib.Path:
  """A tiny Market-layout folder of PNG (lossless) images named as given; returns root."""
  root = pathlib.Path(root)
  for seed, (folder, files) in enumerate((names or TINY_MARKET).items()):
    (root / folder).mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(files):
      Image.fromarray(pixel_image(100 * seed + k)).save(root / folder / name, format=fmt)
  (root / 'bounding_box_test' / 'Thumbs.db').write_bytes(b'not an image')
  return root


def test_parse_market_name():
  assert layouts.parse_market_name('0002_c1s1_000451_03.jpg') == (2, 0)
  assert layouts.parse_market_name('-1_c6s2_000001_00.jpg') == (-1, 5)
  assert layouts.parse_market_name('0000_c8_f0001.jpg') == (0, 7)
  for bad in ('foo.jpg', '0001_c0s1_000001_00.jpg', 'c1_0001.jpg', '1-2_c1s1.jpg', '-5_c1.jpg'):
    assert layouts.parse_market_name(bad) is None, bad


def test_market_records_labels_junk_and_distractors(tmp_path):
  root = write_market(tmp_path / 'Market-1501-v15.09.15')
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # Thumbs.db is not an image: no warning for it
    recs = data.market_layout_records(root)
  assert {k: len(v) for k, v in recs.items()} == {'train': 4, 'query': 2, 'gallery': 3}
  assert [(r.pid, r.camid) for r in recs['train']] == [(1, 0), (1, 1), (2, 0), (2, 2)]
  gallery = {r.file_name: (r.pid, r.camid) for r in recs['gallery']}
  assert gallery['0000_c3s1_000015_00.jpg'] == (0, 2)  # distractor kept
  assert not any(r.pid == -1 for rs in recs.values() for r in rs)  # junk dropped
  assert all(r.path.is_file() for rs in recs.values() for r in rs)
  # The parent of the Market folder works too.
  assert data.market_layout_records(tmp_path) == recs


def test_unparseable_names_one_warning_or_strict_error(tmp_path):
  root = write_market(tmp_path)
  for name in ('bad_name.jpg', 'IMG_0001.png', 'x.jpeg'):
    Image.fromarray(pixel_image(7)).save(root / 'bounding_box_train' / name, format='PNG')
  with pytest.warns(data.DataWarning) as record:
    recs = data.market_layout_records(root)
  assert len(record) == 1
  message = str(record[0].message)
  assert '3 file name(s)' in message and 'bad_name.jpg' in message and '\n' not in message
  assert len(recs['train']) == 4
  with pytest.raises(data.DataError, match=r'bounding_box_train: 3 file name\(s\) do not parse'):
    data.market_layout_records(root, strict=True)


def test_missing_folder_and_wrong_layout_say_what_was_expected(tmp_path):
  with pytest.raises(data.DataError, match='no such folder') as e:
    data.market_layout_records(tmp_path / 'nowhere')
  assert 'Market-1501' in str(e.value)
  (tmp_path / 'query').mkdir()
  (tmp_path / 'images').mkdir()
  with pytest.raises(data.DataError) as e:
    data.market_layout_records(tmp_path, layout='DukeMTMC-reID')
  message = str(e.value)
  assert 'not a DukeMTMC-reID layout' in message and 'bounding_box_train/' in message
  assert 'found: images, query' in message and '\n' not in message
  with pytest.raises(data.DataError, match='MSMT17'):
    data.msmt17_records(tmp_path)


def test_empty_split_is_an_error(tmp_path):
  names = dict(TINY_MARKET, query=[])
  root = write_market(tmp_path, names)
  with pytest.raises(data.DataError, match='query: the query split has no usable images'):
    data.market_layout_records(root)
  # Only junk in a split is empty too.
  names = dict(TINY_MARKET, query=['-1_c1s1_000001_00.jpg'])
  with pytest.raises(data.DataError, match='the query split has no usable images'):
    data.market_layout_records(write_market(tmp_path / 'b', names))


def write_msmt17(root, version='V1', with_missing=False) -> pathlib.Path:
  """A tiny MSMT17 folder: 2 train ids (+1 val image), 1 query, 2 gallery images."""
  root = pathlib.Path(root)
  train, test = layouts.MSMT17_VERSIONS[version]
  lists = {
      'list_train.txt': [(train, '0000/0000_000_01_0303morning_0015_0.jpg', 0),
                         (train, '0001/0001_001_14_0303noon_0100_1.jpg', 1)],
      'list_val.txt': [(train, '0000/0000_002_15_0303noon_0016_0.jpg', 0)],
      'list_query.txt': [(test, '0000/0000_000_02_0303morning_0020_0.jpg', 0)],
      'list_gallery.txt': [(test, '0000/0000_001_03_0303noon_0021_0.jpg', 0),
                           (test, '0001/0001_000_07_0303noon_0022_0.jpg', 1)],
  }
  for list_name, entries in lists.items():
    lines = []
    for k, (folder, rel, pid) in enumerate(entries):
      path = root / folder / rel
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixel_image(k)).save(path, format='JPEG')
      lines.append(f'{rel} {pid}')
    if with_missing and list_name == 'list_gallery.txt':
      lines.append('0002/0002_000_05_0303noon_0030_0.jpg 2')
    (root / list_name).write_text('\n'.join(lines) + '\n')
  return root


@pytest.mark.parametrize('version', ['V1', 'V2'])
def test_msmt17_records(tmp_path, version):
  write_msmt17(tmp_path / f'MSMT17_{version}', version)
  recs = data.msmt17_records(tmp_path)  # the parent works
  assert {k: len(v) for k, v in recs.items()} == {'train': 3, 'query': 1, 'gallery': 2}
  # camera = int(name.split('_')[2]) - 1
  assert [r.camid for r in recs['train']] == [0, 13, 14]
  assert [r.pid for r in recs['gallery']] == [0, 1]
  assert len(data.msmt17_records(tmp_path, with_val=False)['train']) == 2


def test_msmt17_missing_listed_file_and_bad_line(tmp_path):
  root = write_msmt17(tmp_path, with_missing=True)
  with pytest.warns(data.DataWarning, match='1 listed image'):
    recs = data.msmt17_records(root)
  assert len(recs['gallery']) == 2
  with pytest.raises(data.DataError, match='missing'):
    data.msmt17_records(root, strict=True)
  (root / 'list_query.txt').write_text('0000/0000_000_02_0303morning_0020_0.jpg\n')
  with pytest.raises(data.DataError, match=r'list_query.txt: 1 file name\(s\) do not parse'):
    data.msmt17_records(root, strict=True)


def test_check_cameras():
  data.check_cameras(2, camstyle_enabled=True)
  data.check_cameras(1, camstyle_enabled=False)
  with pytest.raises(data.DataError, match='single camera.*camstyle.enabled=False'):
    data.check_cameras(1, camstyle_enabled=True)
  # Camids of a folder holding only c2: one camera although the one-hot width is 2.
  with pytest.raises(data.DataError, match='single camera'):
    data.check_cameras(np.array([1, 1, 1]), camstyle_enabled=True)
  data.check_cameras(np.array([0, 1, 1]), camstyle_enabled=True)


def test_cuhk03_counts(cuhk03_root):
  recs = data.market_layout_records(cuhk03_root)
  assert {k: len(v) for k, v in recs.items()} == {'train': 7239, 'query': 200, 'gallery': 738}
  assert len({r.pid for r in recs['train']}) == 743
  assert {r.camid for rs in recs.values() for r in rs} == {0, 1}
  assert not {r.pid for r in recs['train']} & {r.pid for r in recs['gallery']}
