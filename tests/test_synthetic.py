"""The synthetic multi-camera data set: seed determinism, Market layout, splits, camera nuisance."""

import json
import re

import numpy as np
from PIL import Image
import pytest

from jaxreid.data import synthetic

SMALL = dict(num_cameras=4, num_train_ids=6, num_test_ids=5, images_per_id=6, height=64,
             width=32, seed=3)
# Market-1501 names, parsed independently of the generator: PPPP_cCs1_FFFFFF_00.jpg
NAME = re.compile(r'^(\d{4})_c(\d)s1_(\d{6})_00\.jpg$')
FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}


def _read_folder(root):
  """Every file as (split, pid, 1-based camera, frame, file name)."""
  rows = []
  for split, folder in FOLDERS.items():
    for path in sorted((root / folder).iterdir()):
      m = NAME.match(path.name)
      assert m, f'{path.name} is not a Market-1501 file name'
      rows.append((split, int(m[1]), int(m[2]), int(m[3]), path.name))
  return rows


@pytest.fixture(scope='module')
def small_folder(tmp_path_factory):
  return synthetic.write_market_folder(tmp_path_factory.mktemp('synthetic') / 'market', **SMALL)


@pytest.fixture(scope='module')
def small_set():
  return synthetic.generate(**SMALL, progress=False)


def test_same_seed_same_images_other_seed_different(small_set):
  again = synthetic.generate(**SMALL, progress=False)
  for a, b in zip(small_set, again):
    np.testing.assert_array_equal(a, b)
  other = synthetic.generate(**{**SMALL, 'seed': 4}, progress=False)
  assert np.mean(other.images != small_set.images) > 0.5


def test_same_seed_writes_identical_files(small_folder, tmp_path):
  second = synthetic.write_market_folder(tmp_path / 'again', **SMALL)
  names = [r[4] for r in _read_folder(small_folder)]
  assert names == [r[4] for r in _read_folder(second)]
  for split, *_, name in _read_folder(small_folder):
    folder = FOLDERS[split]
    assert (small_folder / folder / name).read_bytes() == (second / folder / name).read_bytes()


def test_folder_is_market_layout_matching_generate(small_folder, small_set):
  rows = _read_folder(small_folder)
  n_ids = SMALL['num_train_ids'] + SMALL['num_test_ids']
  assert len(rows) == n_ids * SMALL['images_per_id']
  assert {r[1] for r in rows} == set(range(1, n_ids + 1))
  assert {r[2] for r in rows} <= set(range(1, SMALL['num_cameras'] + 1))
  assert len({(r[2], r[3]) for r in rows}) == len(rows)     # (camera, frame) names one image
  meta = json.loads((small_folder / 'synthetic.json').read_text())
  assert {k: meta[k] for k in SMALL} == SMALL
  # Frames run per camera in generation order, so each file maps back to one generated image:
  # the one its pixels are nearest to.
  for split, pid, cam, frame, name in rows:
    i = np.flatnonzero(small_set.camids == cam - 1)[frame]
    assert (small_set.pids[i], small_set.splits[i]) == (pid, split)
    with Image.open(small_folder / FOLDERS[split] / name) as im:
      assert im.format == 'JPEG' and im.mode == 'RGB'
      pixels = np.asarray(im, np.float32)
    assert pixels.shape == (SMALL['height'], SMALL['width'], 3)
    errors = np.abs(pixels - small_set.images).mean((1, 2, 3))
    assert errors.argmin() == i and errors[i] < 4.0    # JPEG quality ~95


def test_train_and_test_identities_are_disjoint_and_numbered_after(small_folder):
  rows = _read_folder(small_folder)
  train = {r[1] for r in rows if r[0] == 'train'}
  test = {r[1] for r in rows if r[0] != 'train'}
  assert train == set(range(1, SMALL['num_train_ids'] + 1))
  assert min(test) == SMALL['num_train_ids'] + 1 and not train & test


def test_every_identity_in_two_cameras_and_every_query_has_a_cross_camera_match(small_folder):
  rows = _read_folder(small_folder)
  cams = {}
  for split, pid, cam, *_ in rows:
    cams.setdefault(pid, set()).add(cam)
  assert all(len(c) >= 2 for c in cams.values())
  query = [(pid, cam) for split, pid, cam, *_ in rows if split == 'query']
  gallery = [(pid, cam) for split, pid, cam, *_ in rows if split == 'gallery']
  # Market convention: one query per identity per camera it appears in, the rest to the gallery.
  assert sorted(query) == sorted({(pid, cam) for split, pid, cam, *_ in rows if split != 'train'})
  for pid, cam in query:
    assert any(p == pid and c != cam for p, c in gallery), (pid, cam)


def _nearest(dist, mask):
  return np.where(mask, dist, np.inf).min(1)


@pytest.mark.parametrize('shared_scene', [False, True])
def test_camera_is_the_main_nuisance_on_raw_pixels(shared_scene):
  data = synthetic.generate(num_cameras=6, num_train_ids=1, num_test_ids=30, images_per_id=6,
                            height=128, width=64, seed=0, shared_scene=shared_scene,
                            progress=False)
  q, g = data.splits == 'query', data.splits == 'gallery'
  x = data.images.reshape(len(data.images), -1).astype(np.float64)
  dist = (x[q] ** 2).sum(1)[:, None] + (x[g] ** 2).sum(1)[None] - 2 * x[q] @ x[g].T
  same_id = data.pids[q, None] == data.pids[None, g]
  same_cam = data.camids[q, None] == data.camids[None, g]
  impostor = _nearest(dist, ~same_id & same_cam)
  cross_match = _nearest(dist, same_id & ~same_cam)
  assert np.all(np.isfinite(impostor)) and np.all(np.isfinite(cross_match))
  assert np.mean(impostor < cross_match) >= 0.8
  # ... yet identity is in the pixels: within a camera, an identity's own other image beats the
  # typical impostor (so the task is hard across cameras, not impossible).
  own = _nearest(dist, same_id & same_cam)
  typical = np.array([np.median(d[m]) for d, m in zip(dist, ~same_id & same_cam)])
  has_own = np.isfinite(own)
  assert has_own.mean() > 0.9
  assert np.mean(own[has_own] < typical[has_own]) >= 0.8


def test_existing_folder_is_reused_and_other_parameters_refused(small_folder):
  meta = small_folder / 'synthetic.json'
  before = meta.stat().st_mtime_ns
  assert synthetic.write_market_folder(small_folder, **SMALL) == small_folder
  assert meta.stat().st_mtime_ns == before
  assert not [p for p in small_folder.parent.iterdir() if '.tmp-' in p.name]
  with pytest.raises(FileExistsError) as e:
    synthetic.write_market_folder(small_folder, **{**SMALL, 'seed': 9})
  assert 'seed=3 (asked 9)' in str(e.value) and '\n' not in str(e.value)


def test_folder_written_before_shared_scene_is_reused_as_per_camera_scenes(tmp_path):
  root = synthetic.write_market_folder(tmp_path / 'market', **SMALL)
  meta = json.loads((root / 'synthetic.json').read_text())
  del meta['shared_scene']      # as folders written before the option existed
  (root / 'synthetic.json').write_text(json.dumps(meta))
  assert synthetic.write_market_folder(root, **SMALL) == root
  with pytest.raises(FileExistsError) as e:
    synthetic.write_market_folder(root, **SMALL, shared_scene=True)
  assert 'shared_scene=False (asked True)' in str(e.value) and '\n' not in str(e.value)


def test_shared_scene_keeps_the_people_and_makes_the_cameras_backgrounds_alike():
  params = {**SMALL, 'num_train_ids': 40, 'num_cameras': 6}
  own = synthetic.generate(**params, progress=False)
  shared = synthetic.generate(**params, shared_scene=True, progress=False)
  assert np.array_equal(own.pids, shared.pids) and np.array_equal(own.camids, shared.camids)
  assert np.array_equal(own.splits, shared.splits)

  def spread_of_camera_layouts(data):
    # A camera's mean image is mostly its background; normalising each channel takes out the
    # camera's colour and exposure, so what still differs between cameras is the scene layout.
    means = np.stack([data.images[data.camids == c].astype(np.float64).mean(0)
                      for c in range(params['num_cameras'])])
    z = (means - means.mean((1, 2), keepdims=True)) / means.std((1, 2), keepdims=True)
    return np.abs(z - z.mean(0)).mean()

  assert spread_of_camera_layouts(shared) < 0.85 * spread_of_camera_layouts(own)


def test_interrupted_write_leaves_nothing_and_can_be_redone(tmp_path, monkeypatch):
  root = tmp_path / 'market'
  params = {**SMALL, 'num_train_ids': 2, 'num_test_ids': 2, 'images_per_id': 4}
  saves = []
  real_save = Image.Image.save

  def save_then_interrupt(self, *args, **kwargs):
    saves.append(1)
    if len(saves) > 5:
      raise KeyboardInterrupt
    return real_save(self, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'save', save_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    synthetic.write_market_folder(root, **params)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.setattr(Image.Image, 'save', real_save)
  synthetic.write_market_folder(root, **params)
  assert len(_read_folder(root)) == 16


def test_folder_that_is_not_a_synthetic_set_is_refused(tmp_path):
  (tmp_path / 'market').mkdir()
  (tmp_path / 'market' / 'notes.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='not a synthetic data set'):
    synthetic.write_market_folder(tmp_path / 'market', **SMALL)


@pytest.mark.parametrize('key, value', [('num_cameras', 1), ('num_cameras', 10),
                                        ('images_per_id', 3), ('num_test_ids', 0),
                                        ('height', 8), ('seed', 1.5), ('shared_scene', 1)])
def test_unusable_parameters_are_named_in_one_line(key, value, tmp_path):
  with pytest.raises(ValueError) as e:
    synthetic.write_market_folder(tmp_path / 'market', **{**SMALL, key: value})
  assert key in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'market').exists()


def _train_images(root):
  names = sorted(p.name for p in (root / FOLDERS['train']).iterdir())
  images = np.stack([np.asarray(Image.open(root / FOLDERS['train'] / n), np.float32) / 255
                     for n in names])
  return names, images, np.array([int(NAME.match(n)[2]) - 1 for n in names])


def test_re_render_is_the_same_image_as_another_camera_records_it(small_folder):
  names, images, cams = _train_images(small_folder)
  others = [[k for k in range(SMALL['num_cameras']) if k != c] for c in cams]
  own = synthetic.render_in_cameras(names, [[c] for c in cams], **SMALL)
  moved = synthetic.render_in_cameras(names, others, **SMALL)
  flat = images.reshape(len(images), -1)
  # Under its own camera the re-render is that file (only sensor noise and JPEG differ): its
  # nearest training image is itself, at a fraction of the distance to the next one.
  for i, render in enumerate(own):
    d = np.abs(flat - render.reshape(1, -1).astype(np.float32) / 255).mean(1)
    assert d.argmin() == i and d[i] < 0.5 * np.sort(d)[1], names[i]
  # Under another camera it looks like that camera: nearest to that camera's mean image.
  means = np.stack([images[cams == k].mean(0) for k in range(SMALL['num_cameras'])])
  hits = [np.abs(means - f.astype(np.float32) / 255).mean((1, 2, 3)).argmin() == k
          for row, targets in zip(moved, others) for f, k in zip(row, targets)]
  assert np.mean(hits) >= 0.9
  assert all(r.shape == (len(t), SMALL['height'], SMALL['width'], 3) and r.dtype == np.uint8
             for r, t in zip(moved, others))


def test_re_render_refuses_a_name_it_never_wrote():
  with pytest.raises(ValueError, match=r'^0999_c1s1_000000_00\.jpg: not an image of the synthetic'):
    synthetic.render_in_cameras(['0999_c1s1_000000_00.jpg'], [[1]], **SMALL)
