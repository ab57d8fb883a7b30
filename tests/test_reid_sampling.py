"""Support-set sampling: every real image once per epoch, slots drawn as configured, labels kept."""

import pathlib

import jax
import numpy as np
import pytest

from jaxreid import configlib, parallel
from jaxreid.reid import sampling

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


def test_each_image_once_and_slots_uniform_over_the_support_set():
  items = sampling.epoch_items(6000, 6, seed=0, epoch=0)
  np.testing.assert_array_equal(items[:, 0], np.arange(6000))
  counts = np.bincount(items[:, 1], minlength=6)
  assert counts.min() > 900 and counts.max() < 1100       # 1000 expected per slot
  again = sampling.epoch_items(6000, 6, seed=0, epoch=0)
  np.testing.assert_array_equal(again, items)
  assert np.mean(sampling.epoch_items(6000, 6, seed=0, epoch=1)[:, 1] != items[:, 1]) > 0.5


def test_real_prob_and_no_fakes():
  items = sampling.epoch_items(6000, 6, seed=0, epoch=0, real_prob=0.3)
  slots = items[:, 1]
  assert np.mean(slots == 0) == pytest.approx(0.3, abs=0.03)
  fake_counts = np.bincount(slots[slots > 0], minlength=6)[1:]
  assert fake_counts.min() > 0.8 * fake_counts.mean()
  assert not np.any(sampling.epoch_items(50, 1, seed=0, epoch=3)[:, 1])
  assert not np.any(sampling.epoch_items(50, 6, seed=0, epoch=3, real_prob=1.0)[:, 1])
  with pytest.raises(ValueError, match=r'config.train.real_prob=1.5: expected a probability'):
    sampling.epoch_items(50, 6, seed=0, epoch=0, real_prob=1.5)


def test_batches_carry_the_real_images_cluster_and_the_drawn_slot():
  n, size, num_cams = 45, 4, 4
  cfg = common.get_config()
  cfg.data.height, cfg.data.width = 8, 4
  cfg.train.batch_size = 8
  labels = np.arange(n) // 3
  own_cam = np.arange(n) % num_cams

  def get_support(i, s):
    # Constant images survive crop, resize and flip: the pixel says which (image, slot) it is.
    return np.full((16, 8, 3), (i, s * 40, 7), np.uint8)

  def slot_camera(i, s):
    return own_cam[i] if s == 0 else [c for c in range(num_cams) if c != own_cam[i]][s - 1]

  mesh = parallel.make_mesh()
  seen = []
  for batch in sampling.support_batches(get_support, size, labels, config=cfg, epoch=2,
                                        mesh=mesh, slot_camera=slot_camera):
    b = jax.tree.map(np.asarray, batch)
    image_id, slot = b['image'][:, 0, 0, 0], b['image'][:, 0, 0, 1] // 40
    np.testing.assert_array_equal(image_id, b['index'])
    np.testing.assert_array_equal(b['label'], labels[image_id])
    np.testing.assert_array_equal(b['camid'], [slot_camera(i, s) for i, s in zip(image_id, slot)])
    seen.extend(zip(image_id.tolist(), slot.tolist()))
  assert len(seen) == sampling.steps_per_epoch(n, cfg) * 8 == 40   # remainder dropped, as BUC
  assert len({i for i, _ in seen}) == 40
  want = sampling.epoch_items(n, size, seed=cfg.seed, epoch=2)
  assert all(want[i, 1] == s for i, s in seen)
  assert len({s for _, s in seen}) > 1
