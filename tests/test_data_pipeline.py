"""Input pipeline: BUC augmentation, normalisation, deterministic sharded batches, eval padding."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxreid import configlib, parallel
from jaxreid.data import augment, pipeline
from conftest import REPO

N = 37  # items: not a multiple of the batch size


@pytest.fixture(scope='module')
def data_config():
  return configlib.load_sibling(str(REPO / 'configs' / 'x.py'), 'common').get_config().data


def item_image(item) -> np.ndarray:
  """A distinct image per item, of a size that depends on the item (as real crops do)."""
  item = item[0] * 7 + item[1] if isinstance(item, tuple) else item
  rng = np.random.default_rng(int(item))
  return rng.integers(0, 256, (20 + item % 5, 10 + item % 3, 3), dtype=np.uint8)


def collect(batches) -> list[dict]:
  return [jax.tree.map(np.asarray, b) for b in batches]


def train(mesh, data_config, get_image=item_image, **kwargs):
  args = dict(batch_size=8, height=16, width=8, seed=5, epoch=1, mesh=mesh,
              data_config=data_config, camids=np.arange(N) % 3)
  args.update(kwargs)
  return collect(pipeline.train_batches(get_image, np.arange(N), np.arange(N) * 10, **args))


def coordinate_image(height=120, width=60) -> np.ndarray:
  """R = 4x, G = 2y: every pixel says where it is."""
  y, x = np.mgrid[:height, :width]
  return np.stack([4 * x, 2 * y, np.zeros_like(x)], -1).astype(np.uint8)


def test_rect_crop_boxes_obey_area_and_aspect_ranges():
  image = coordinate_image()
  boxes, fallbacks = [], 0
  for seed in range(300):
    out = augment.random_resized_rect_crop(image, np.random.default_rng(seed), 120, 60)
    assert out.shape == (120, 60, 3) and out.dtype == np.uint8
    x0, y0 = out[0, 0, 0] / 4, out[0, 0, 1] / 2
    x1, y1 = out[-1, -1, 0] / 4 + 1, out[-1, -1, 1] / 2 + 1
    w, h = x1 - x0, y1 - y0
    if w == 60 and h == 120:
      fallbacks += 1
      continue
    boxes.append((w * h / (120 * 60), h / w))
  area, ratio = np.array(boxes).T
  # Corners are read back through bilinear upsampling: allow about a pixel of slack.
  assert area.min() > 0.64 - 0.04 and area.max() < 1.0 + 0.04
  assert ratio.min() > 2.0 - 0.1 and ratio.max() < 3.0 + 0.15
  assert area.min() < 0.7 and ratio.max() > 2.6  # the ranges are really explored
  assert fallbacks < 150  # most draws find a box within 10 tries


def test_rect_crop_falls_back_to_plain_resize():
  image = coordinate_image(40, 30)
  reference = np.asarray(Image.fromarray(image).resize((16, 32), Image.BILINEAR))
  # h/w of 10 never fits a 40x30 image: every try fails.
  out = augment.random_resized_rect_crop(image, np.random.default_rng(0), 32, 16,
                                         aspect=(10.0, 10.0))
  np.testing.assert_array_equal(out, reference)


def test_flip_mirrors_about_half_of_the_time():
  image = item_image(3)[:20, :10]
  plain = np.asarray(Image.fromarray(image).resize((16, 32), Image.BILINEAR))
  flips = 0
  for seed in range(200):
    # Area 1 and the image's own aspect: the box is the whole image.
    out = augment.reid_train_augment(image, np.random.default_rng(seed), height=32, width=16,
                                     area=(1.0, 1.0), aspect=(2.0, 2.0))
    if np.array_equal(out, plain[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, plain)
  assert 70 < flips < 130


def test_camstyle_augment_resizes_crops_and_flips():
  image = coordinate_image(60, 30)
  loaded = np.asarray(Image.fromarray(image).resize((36, 72), Image.BILINEAR))
  sizes = dict(load_height=72, load_width=36, height=64, width=32)
  out = augment.resize_crop_flip(image, top=5, left=3, flip=False, **sizes)
  np.testing.assert_array_equal(out, loaded[5:69, 3:35])
  flipped = augment.resize_crop_flip(image, top=8, left=0, flip=True, **sizes)
  np.testing.assert_array_equal(flipped, loaded[8:72, 0:32][:, ::-1])
  with pytest.raises(ValueError, match='expected the window inside it'):
    augment.resize_crop_flip(image, top=9, left=0, flip=False, **sizes)


def test_normalize_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  expected = (x / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(jax.jit(augment.normalize, static_argnums=(1, 2))(x, mean, std),
                             expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(augment.normalize(x / 255.0, mean, std), expected, atol=1e-5)
  half = augment.normalize(x, 0.5, 0.5, dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16 and float(half.min()) >= -1 and float(half.max()) <= 1


def test_train_batches_do_not_depend_on_devices_or_threads(data_config):
  mesh8 = parallel.make_mesh()
  mesh1 = parallel.make_mesh(jax.devices()[:1])
  reference = train(mesh8, data_config, threads=2)
  as_pil = lambda item: Image.fromarray(item_image(item))  # noqa: E731
  for other in (train(mesh1, data_config, threads=0),
                train(mesh8, data_config, threads=3, prefetch=0),
                train(mesh8, data_config, get_image=as_pil)):
    assert len(other) == len(reference)
    for a, b in zip(reference, other):
      for key in ('image', 'label', 'index', 'camid'):
        np.testing.assert_array_equal(a[key], b[key])


def test_an_epoch_is_a_shuffled_pass_with_matching_labels(data_config):
  mesh = parallel.make_mesh()
  batches = train(mesh, data_config)
  assert len(batches) == N // 8 == pipeline.steps_per_epoch(N, 8)
  index = np.concatenate([b['index'] for b in batches])
  assert len(set(index)) == len(index) == 32 and index.max() < N
  assert not np.array_equal(index, np.sort(index))
  for b in batches:
    assert b['image'].shape == (8, 16, 8, 3) and b['image'].dtype == np.uint8
    np.testing.assert_array_equal(b['label'], b['index'] * 10)
    np.testing.assert_array_equal(b['camid'], b['index'] % 3)
  again = np.concatenate([b['index'] for b in train(mesh, data_config)])
  np.testing.assert_array_equal(again, index)
  other_epoch = np.concatenate([b['index'] for b in train(mesh, data_config, epoch=2)])
  assert not np.array_equal(other_epoch, index)


def test_batches_are_sharded_over_the_data_axis(data_config):
  mesh = parallel.make_mesh()
  batch = next(pipeline.train_batches(item_image, np.arange(N), np.zeros(N), batch_size=16,
                                      height=16, width=8, seed=0, epoch=0, mesh=mesh,
                                      data_config=data_config))
  for value in batch.values():
    assert value.sharding.spec == jax.sharding.PartitionSpec('data')
    assert len(value.addressable_shards) == 8
    assert value.addressable_shards[0].data.shape[0] == 2


def test_last_short_batch_is_padded_and_marked(data_config):
  batches = train(parallel.make_mesh(), data_config, drop_remainder=False)
  assert len(batches) == pipeline.steps_per_epoch(N, 8, drop_remainder=False) == 5
  last = batches[-1]
  assert len(last['index']) == 8  # 5 real rows, padded up to the 8 devices
  pad = last['index'] < 0
  assert pad.sum() == 3 and (last['label'][pad] == -1).all() and (last['camid'][pad] == -1).all()
  assert not last['image'][pad].any()
  index = np.concatenate([b['index'] for b in batches])
  assert sorted(index[index >= 0]) == list(range(N))


def test_custom_augment_sees_the_right_item(data_config):
  def resize(image, rng):
    del rng
    return augment.resize(image, 16, 8)

  for b in train(parallel.make_mesh(), data_config, augment=resize, threads=2):
    for image, row in zip(b['image'], b['index']):
      np.testing.assert_array_equal(image, augment.resize(item_image(int(row)), 16, 8))


def test_support_slots_and_two_column_items(data_config):
  slots = pipeline.support_slots(500, 6, seed=0, epoch=0)
  assert set(slots) == set(range(6))
  np.testing.assert_array_equal(slots, pipeline.support_slots(500, 6, seed=0, epoch=0))
  assert not np.array_equal(slots, pipeline.support_slots(500, 6, seed=0, epoch=1))
  assert (pipeline.support_slots(50, 6, seed=0, epoch=0, real_prob=1.0) == 0).all()
  fakes = pipeline.support_slots(500, 6, seed=0, epoch=0, real_prob=0.0)
  assert fakes.min() == 1 and fakes.max() == 5
  assert 0.2 < (pipeline.support_slots(2000, 6, seed=1, epoch=0, real_prob=0.3) == 0).mean() < 0.4
  assert (pipeline.support_slots(9, 1, seed=0, epoch=0) == 0).all()
  seen = []

  def get_image(item):
    seen.append(item)
    return item_image(item)

  items = pipeline.support_items(N, pipeline.support_slots(N, 4, seed=0, epoch=0))
  batches = list(pipeline.train_batches(get_image, items, np.zeros(N), batch_size=8, height=16,
                                        width=8, seed=0, epoch=0, mesh=parallel.make_mesh(),
                                        data_config=data_config, threads=0))
  assert len(batches) == 4
  assert all(isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], int) for s in seen)
  assert {s for s in seen} <= {(int(i), int(k)) for i, k in items}


def test_each_host_decodes_only_its_rows(data_config, monkeypatch):
  """Two simulated hosts: their row halves put together are the single-host batch."""
  mesh = parallel.make_mesh()
  monkeypatch.setattr(parallel, 'shard_batch', lambda batch, mesh: batch)
  whole = train(mesh, data_config)
  halves = []
  for host in (0, 1):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(jax, 'process_index', lambda host=host: host)
    calls = []

    def get_image(item, calls=calls):
      calls.append(item)
      return item_image(item)

    halves.append(collect(pipeline.train_batches(
        get_image, np.arange(N), np.arange(N) * 10, batch_size=8, height=16, width=8, seed=5,
        epoch=1, mesh=mesh, data_config=data_config, camids=np.arange(N) % 3)))
    assert len(calls) == 16  # 4 batches x 4 of 8 rows
  for b, h0, h1 in zip(whole, *halves):
    for key in b:
      np.testing.assert_array_equal(b[key], np.concatenate([h0[key], h1[key]]))


def test_eval_batches_keep_order_and_pad(data_config):
  del data_config
  mesh = parallel.make_mesh()
  indices = list(range(100, 121))
  got = list(pipeline.eval_batches(item_image, indices, batch_size=8, height=16, width=8,
                                   mesh=mesh))
  assert [v for _, v in got] == [8, 8, 5]
  images = np.concatenate([np.asarray(b) for b, _ in got])
  assert images.shape == (24, 16, 8, 3)
  for row, index in enumerate(indices):
    reference = np.asarray(Image.fromarray(item_image(index)).resize((8, 16), Image.BILINEAR))
    np.testing.assert_array_equal(images[row], reference)
  assert not images[21:].any()
  one = list(pipeline.eval_batches(item_image, indices, batch_size=8, height=16, width=8,
                                   mesh=parallel.make_mesh(jax.devices()[:1]), threads=0))
  assert [np.asarray(b).shape[0] for b, _ in one] == [8, 8, 5]


def test_stopping_early_releases_the_decoder_threads(data_config):
  gen = pipeline.train_batches(item_image, np.arange(N), np.zeros(N), batch_size=8, height=16,
                               width=8, seed=0, epoch=0, mesh=parallel.make_mesh(),
                               data_config=data_config, threads=2, prefetch=3)
  next(gen)
  gen.close()
  for t in threading.enumerate():
    if t.name.startswith('jaxreid-data'):
      t.join(timeout=30)
      assert not t.is_alive()


def test_gray_images_and_bad_arguments(data_config):
  mesh = parallel.make_mesh()

  def gray(item):
    return item_image(item)[..., 0]

  b = next(pipeline.train_batches(gray, np.arange(N), np.zeros(N), batch_size=8, height=16,
                                  width=8, seed=0, epoch=0, mesh=mesh, data_config=data_config))
  image = np.asarray(b['image'])
  assert image.shape == (8, 16, 8, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  # Argument errors surface at the call, before any batch is asked for.
  with pytest.raises(ValueError, match=r'expected one per item \(37,\)'):
    pipeline.train_batches(item_image, np.arange(N), np.zeros(N - 1), batch_size=8, height=16,
                           width=8, seed=0, epoch=0, mesh=mesh, data_config=data_config)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    pipeline.train_batches(item_image, np.arange(N), np.zeros(N), batch_size=12, height=16,
                           width=8, seed=0, epoch=0, mesh=mesh, data_config=data_config)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    pipeline.eval_batches(item_image, range(N), batch_size=12, height=16, width=8, mesh=mesh)
  with pytest.raises(ValueError, match=r'augmentation returned uint8 \(8, 8, 3\)'):
    next(pipeline.train_batches(item_image, np.arange(N), np.zeros(N), batch_size=8, height=16,
                                width=8, seed=0, epoch=0, mesh=mesh,
                                augment=lambda im, rng: augment.resize(im, 8, 8)))
