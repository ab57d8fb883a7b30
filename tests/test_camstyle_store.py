"""The fakes store: random access by (image, target camera), support sets, resumable generation."""

import concurrent.futures
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxreid import checkpoint, parallel, support_sets
from jaxreid.camstyle import generate, store, train
from jaxreid.configlib import load_sibling

REPO = pathlib.Path(__file__).resolve().parents[1]
L = 3


def _fill(n, h=16, w=8):
  """Distinct images: image i, target k is a flat colour encoding (i, k) (PNG round trips it)."""
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, L, h, w, 3), dtype=np.uint8)


def _write_store(root, camids, chunk_size, fakes):
  store.write_index(root, camids, L, chunk_size, 'png')
  for k, rows in enumerate(store.chunk_ranges(len(camids), chunk_size)):
    encoded = [store.encode(fakes[i, t], 'png') for i in rows
               for t in support_sets.target_cameras_of(int(camids[i]), L)]
    store.write_chunk(store.chunk_path(root, k), encoded)


def test_random_access_returns_each_fake_and_support_slots_follow_ascending_cameras(tmp_path):
  camids = np.array([0, 2, 1, 1, 0, 2, 2], np.int32)
  fakes = _fill(len(camids))
  _write_store(tmp_path, camids, chunk_size=3, fakes=fakes)
  s = store.FakeStore.open(tmp_path)
  assert (s.num_images, s.num_cameras) == (7, 3)
  order = np.random.default_rng(1).permutation([(i, t) for i in range(7) for t in range(L)
                                                if t != camids[i]])
  for i, t in order:  # any order: true random access across chunks
    np.testing.assert_array_equal(s.fake(i, t), fakes[i, t])
  assert s.target_cameras(1) == (0, 1) and s.target_cameras(3) == (0, 2)
  reals = np.random.default_rng(2).integers(0, 256, (7, 16, 8, 3), dtype=np.uint8)
  sets = support_sets.SupportSets(lambda i: reals[i], s)
  assert sets.size == L
  np.testing.assert_array_equal(sets.support_image(3, 0), reals[3])
  np.testing.assert_array_equal(sets.support_image(3, 1), fakes[3, 0])
  np.testing.assert_array_equal(sets.support_image(3, 2), fakes[3, 2])
  assert [sets.slot_camera(3, l) for l in range(3)] == [1, 0, 2]
  with pytest.raises(KeyError, match='image 3 .camera 1. has no fake for camera 1'):
    s.fake(3, 1)
  with pytest.raises(IndexError):
    s.fake(7, 0)
  assert support_sets.SupportSets(lambda i: reals[i], None, camids).size == 1
  s.close()
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(s)).fake(5, 1), fakes[5, 1])


def test_incomplete_or_foreign_store_is_refused_in_one_line(tmp_path):
  camids = np.array([0, 1, 2, 0], np.int32)
  fakes = _fill(4)
  _write_store(tmp_path, camids, chunk_size=2, fakes=fakes)
  store.chunk_path(tmp_path, 1).unlink()
  with pytest.raises(store.StoreError) as e:
    store.FakeStore.open(tmp_path)
  assert 'incomplete (1 of 2 chunks)' in str(e.value) and '\n' not in str(e.value)
  with pytest.raises(store.StoreError, match='no fakes store here'):
    store.FakeStore.open(tmp_path / 'nothing')
  with pytest.raises(store.StoreError, match='fakes of other images'):
    store.write_index(tmp_path, camids[::-1].copy(), L, 2, 'png')


def test_damaged_chunks_are_named_and_only_they_are_removed(tmp_path):
  camids = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  _write_store(tmp_path, camids, chunk_size=2, fakes=_fill(len(camids)))
  assert store.check(tmp_path) == []
  path = [store.chunk_path(tmp_path, k) for k in range(4)]
  kept = path[3].read_bytes()
  os.truncate(path[0], path[0].stat().st_size - 5)  # array_record's footer is at the end
  path[1].write_bytes(b'\0' * 4096)  # not array_record at all
  # Whole, but of another chunk size: 2 records where 4 are due.
  store.write_chunk(path[2], [store.encode(np.zeros((4, 2, 3), np.uint8), 'png')] * 2)
  problems = store.check(tmp_path)
  assert [p.split()[0] for p in problems] == [p.name for p in path[:3]]
  assert all('damaged' in p and '\n' not in p for p in problems)
  assert '2 records, expected 4' in problems[2]
  assert store.remove_damaged(tmp_path) == problems
  assert [p.exists() for p in path] == [False, False, False, True]
  assert path[3].read_bytes() == kept
  assert store.check(tmp_path) == [f'{p.name} missing' for p in path[:3]]


def test_old_format_store_is_refused_in_one_line_and_cleared(tmp_path):
  camids = np.array([0, 1, 2], np.int32)
  _write_store(tmp_path, camids, chunk_size=2, fakes=_fill(3))
  index = json.loads((tmp_path / 'index.json').read_text())
  (tmp_path / 'index.json').write_text(json.dumps({**index, 'format': 'jaxreid-fakes-v1'}))
  with pytest.raises(store.StoreError) as e:
    store.FakeStore.open(tmp_path)
  assert "old format 'jaxreid-fakes-v1'" in str(e.value) and '\n' not in str(e.value)
  assert 'run the same command again to regenerate it' in str(e.value)
  assert store.check(tmp_path) == [f"index.json in the old format 'jaxreid-fakes-v1', expected "
                                   f"'{store.FORMAT}'"]
  store.remove_damaged(tmp_path)
  assert not list(tmp_path.glob('*.*')) and not list((tmp_path / 'chunks').iterdir())
  _write_store(tmp_path, camids, chunk_size=2, fakes=_fill(3))  # regenerated from scratch
  assert store.check(tmp_path) == []


def test_threads_sharing_one_store_read_the_right_fakes(tmp_path):
  camids = np.arange(40, dtype=np.int32) % L
  fakes = _fill(len(camids))
  _write_store(tmp_path, camids, chunk_size=8, fakes=fakes)
  s = store.FakeStore.open(tmp_path)
  pairs = [(i, t) for i in range(len(camids)) for t in s.target_cameras(i)] * 5
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(lambda p: s.fake(*p), pairs))
  for (i, t), fake in zip(pairs, got):
    np.testing.assert_array_equal(fake, fakes[i, t])


def _tiny_config():
  config = load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config()
  c = config.camstyle
  c.height, c.width, c.load_height, c.load_width = 16, 8, 18, 10
  c.g_conv_dim, c.g_repeat_num, c.d_conv_dim, c.d_repeat_num = 2, 1, 2, 2
  c.batch_size, c.num_iters, c.n_critic = 8, 2, 2
  c.sample_images, c.chunk_size, c.generate_batch_size = 3, 4, 8
  c.checkpoint_every = c.sample_every = c.log_every = 2
  return config


class _Split:
  """Stand-in for a ReidSplit: images of mixed sizes, camera ids, file names; no identities."""

  def __init__(self, n=10):
    rng = np.random.default_rng(3)
    self.camids = np.arange(n, dtype=np.int32) % L
    self.num_cameras = L
    self._images = [rng.integers(0, 256, (24 + 4 * (i % 2), 12, 3), dtype=np.uint8)
                    for i in range(n)]
    self.file_names = [f'{i:04d}_c{self.camids[i] + 1}s1_000000_00.jpg' for i in range(n)]

  def __len__(self):
    return len(self.camids)

  def image(self, i):
    return self._images[i]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A checkpoint of an untrained tiny StarGAN, where training leaves it: generation needs some
  generator, not a good one."""
  root = tmp_path_factory.mktemp('camstyle')
  config, split = _tiny_config(), _Split()
  mesh = parallel.make_mesh()
  ckpt = checkpoint.Checkpointer(root / 'camstyle' / 'checkpoints')
  ckpt.save(0, parallel.replicate(train.init_state(config, L), mesh), {'step': 0})
  ckpt.close()
  return config, split, root / 'camstyle', mesh


def test_generation_killed_midway_resumes_to_the_same_store(trained, tmp_path, monkeypatch):
  config, split, camstyle_dir, mesh = trained
  config = config.copy_and_resolve_references()
  config.camstyle.write_hhl_folder = True
  whole = generate.generate(config, split, camstyle_dir, tmp_path / 'whole', mesh)
  assert whole['chunks_written'] == 3 and whole['num_fakes'] == 10 * (L - 1)

  real_write, calls = store.write_chunk, []

  def dying_write(path, encoded):
    calls.append(path.name)
    if len(calls) == 2:
      raise KeyboardInterrupt  # killed while writing the second chunk
    return real_write(path, encoded)

  monkeypatch.setattr(store, 'write_chunk', dying_write)
  with pytest.raises(KeyboardInterrupt):
    generate.generate(config, split, camstyle_dir, tmp_path / 'resumed', mesh)
  monkeypatch.setattr(store, 'write_chunk', real_write)
  assert not list((tmp_path / 'resumed' / 'chunks').glob('.*tmp'))
  with pytest.raises(store.StoreError, match='incomplete'):
    store.FakeStore.open(tmp_path / 'resumed')
  again = generate.generate(config, split, camstyle_dir, tmp_path / 'resumed', mesh)
  assert again['chunks_written'] == 2  # the finished first chunk was skipped
  for k in range(3):  # array_record writes the same bytes for the same records
    assert (store.chunk_path(tmp_path / 'whole', k).read_bytes() ==
            store.chunk_path(tmp_path / 'resumed', k).read_bytes())

  s = store.FakeStore.open(tmp_path / 'whole')
  for i in range(len(split)):
    for t in s.target_cameras(i):
      fake = s.fake(i, t)
      assert fake.shape == split.image(i).shape  # fakes keep their source image's size
      hhl = tmp_path / 'whole' / 'hhl' / f'{i:04d}_c{split.camids[i] + 1}s1_000000_00_fake_{t + 1}.jpg'
      np.testing.assert_allclose(np.asarray(Image.open(hhl)), fake, atol=40)
  assert len(list((tmp_path / 'whole' / 'hhl').iterdir())) == 10 * (L - 1)
  assert pathlib.Path(whole['figure']).is_file()


def test_generation_is_the_same_on_one_and_eight_devices(trained, tmp_path):
  config, split, camstyle_dir, mesh = trained
  import jax
  one = parallel.make_mesh(jax.devices()[:1])
  generate.generate(config, split, camstyle_dir, tmp_path / 'one', one)
  generate.generate(config, split, camstyle_dir, tmp_path / 'eight', mesh)
  a, b = store.FakeStore.open(tmp_path / 'one'), store.FakeStore.open(tmp_path / 'eight')
  for i in range(len(split)):
    for t in a.target_cameras(i):
      # The same uint8 fakes up to a rare rounding flip, hence a tolerance of one JPEG step.
      np.testing.assert_allclose(a.fake(i, t).astype(int), b.fake(i, t).astype(int), atol=3)


def test_store_size_is_within_budget_of_the_originals(trained, tmp_path, cuhk03_root):
  """Fakes of real photos stay within 1.5x the originals' bytes times L - 1 (the store's size budget)."""
  config, _, camstyle_dir, mesh = trained
  files = sorted((cuhk03_root / 'bounding_box_train').glob('*.jpg'))[:12]
  images = [np.asarray(Image.open(f).convert('RGB')) for f in files]

  class Photos(_Split):
    def __init__(self):
      super().__init__(len(files))
      self._images = images

    def image_bytes(self, i):
      return files[i].read_bytes()

  summary = generate.generate(config, Photos(), camstyle_dir, tmp_path / 'f', mesh)
  budget = 1.5 * sum(f.stat().st_size for f in files) * (L - 1)
  s = store.FakeStore.open(tmp_path / 'f')
  fakes = sum(len(s.fake_bytes(i, t)) for i in range(len(files)) for t in s.target_cameras(i))
  assert fakes <= budget
  assert summary['size_ratio'] == pytest.approx(fakes / (budget / 1.5))
  assert summary['size_ratio'] <= 1.5
  # On disk, array_record adds a fixed framing to each chunk file (64 KiB blocks, the footer's
  # block last), whatever the images: at most 2 blocks a chunk here.
  chunks = len(store.chunk_ranges(len(files), config.camstyle.chunk_size))
  assert fakes < s.nbytes() <= budget + chunks * 2 * 65536
