"""Batches onto the device mesh for both networks: shuffled + augmented for training, resized in
order for evaluation.

Everything random is derived from (seed, epoch, item row) on the host, so a batch is the same for
any number of threads, devices or hosts. Each host decodes only its own rows of every global batch
(`parallel.host_slice`), a thread pool decodes `prefetch` batches ahead of the device, and batches
travel as uint8: normalise them on the device with `augment.normalize` inside the jitted step.

How the trainers use it:
  * re-ID (support sets): `train_batches`, one epoch at a time, with items =
    `support_items(n, slots)` and `slots = support_slots(n, L, seed=, epoch=, real_prob=)` re-drawn
    every epoch, labels = cluster label of each real image, camids = camera of the drawn sample;
    get_image((i, s)) returns the real image i (s = 0) or its fake number s.
  * StarGAN: `camstyle_batches`, by iteration (a run resumes in the middle of an epoch): the plan of
    iteration k (`camstyle_plan`) draws the images, crop offsets, flips and target cameras of its
    whole batch at once, and `augment.resize_crop_flip` applies them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxreid import parallel
from jaxreid.data import augment as augment_lib

# Independent random streams derived from the one seed.
_SHUFFLE, _AUGMENT, _SLOTS = 0, 1, 2
_CAMSTYLE = 0x5CA3  # the StarGAN's order and augmentation, one stream per (epoch, iteration)


def _rng(seed: int, stream: int, epoch: int, *more: int) -> np.random.Generator:
  return np.random.default_rng([seed % (1 << 64), stream, epoch, *more])


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which an epoch visits rows 0..num_items-1 (a function of seed and epoch only)."""
  return _rng(seed, _SHUFFLE, epoch).permutation(num_items)


def steps_per_epoch(num_items: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches `train_batches` yields for an epoch of num_items rows."""
  return num_items // batch_size if drop_remainder else -(-num_items // batch_size)


def support_slots(num_images: int, num_slots: int, *, seed: int, epoch: int,
                  real_prob: float = -1.0) -> np.ndarray:
  """Which member of each real image's support set an epoch uses: 0 = the real image, s >= 1 = its
  fake s. real_prob < 0: uniform over the num_slots members; else P(real) = real_prob."""
  rng = _rng(seed, _SLOTS, epoch)
  if num_slots <= 1:
    return np.zeros(num_images, np.int32)
  if real_prob < 0:
    return rng.integers(0, num_slots, num_images).astype(np.int32)
  fake = 1 + rng.integers(0, num_slots - 1, num_images)
  return np.where(rng.random(num_images) < real_prob, 0, fake).astype(np.int32)


def support_items(num_images: int, slots: np.ndarray) -> np.ndarray:
  """[num_images, 2] rows (real image index, support slot): `items` for support-set training."""
  return np.stack([np.arange(num_images), np.asarray(slots)], axis=1).astype(np.int64)


def _item(items, row: int):
  """items[row] as plain Python ints: an int, or a tuple for 2-D items."""
  item = items[row]
  if isinstance(item, np.ndarray):
    return tuple(int(v) for v in item)
  return int(item) if isinstance(item, np.integer) else item


def _global_batches(rows: np.ndarray, batch_size: int, num_devices: int,
                    drop_remainder: bool) -> list[np.ndarray]:
  """Rows cut into batches; a last short batch is padded with -1 up to a multiple of devices."""
  full = len(rows) // batch_size
  out = [rows[i * batch_size:(i + 1) * batch_size] for i in range(full)]
  rest = rows[full * batch_size:]
  if len(rest) and not drop_remainder:
    padded = -(-len(rest) // num_devices) * num_devices
    out.append(np.concatenate([rest, np.full(padded - len(rest), -1, rest.dtype)]))
  return out


def _prefetched(make_row: Callable[[Any], np.ndarray], batches: Iterable[Sequence[Any]],
                prefetch: int, threads: int) -> Iterator[list[np.ndarray]]:
  """make_row over each batch's rows, in order, with up to `prefetch` batches decoded ahead by a
  pool of `threads` (threads = 0: inline, the sequential baseline)."""
  if threads <= 0:
    for rows in batches:
      yield [make_row(r) for r in rows]
    return
  pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='jaxreid-data')
  pending = collections.deque()
  upcoming = iter(batches)
  try:
    for rows in upcoming:
      pending.append([pool.submit(make_row, r) for r in rows])
      if len(pending) > prefetch:
        break
    while pending:
      futures = pending.popleft()
      rows = next(upcoming, None)
      if rows is not None:
        pending.append([pool.submit(make_row, r) for r in rows])
      yield [f.result() for f in futures]
  finally:
    # Also runs when the consumer stops early: do not leave decode work running behind it.
    pool.shutdown(wait=False, cancel_futures=True)


def _check_image(image: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
  if image.shape != (height, width, 3) or image.dtype != np.uint8:
    raise ValueError(f'{what} returned {image.dtype} {image.shape}: expected uint8 '
                     f'{(height, width, 3)}')
  return image


def train_batches(get_image: Callable[[Any], np.ndarray], items, labels, *, batch_size: int,
                  height: int, width: int, seed: int, epoch: int, mesh: Mesh, data_config=None,
                  camids=None, augment: augment_lib.Augment | None = None,
                  drop_remainder: bool = True, prefetch: int = 2,
                  threads: int = 2) -> Iterator[dict[str, jax.Array]]:
  """One epoch of shuffled, augmented global batches, sharded over the mesh's 'data' axis.

  items: N entries (ints, or rows of a 2-D int array passed to get_image as tuples);
  get_image(item) -> uint8 HxWx3 array of any size, or an RGB PIL image (ReidSplit.pil_image);
  labels / camids: N ints (camids default -1).
  augment(image, rng) defaults to the re-ID augmentation of `data_config` at height x width.
  Yields {'image': uint8 [B,H,W,3], 'label', 'index' (the row of items), 'camid': int32 [B]}.
  drop_remainder=False adds a last batch padded to a multiple of the device count with rows whose
  index, label and camid are -1 (mask them out). Same (seed, epoch) -> same batches.
  """
  n = len(items)
  labels = np.asarray(labels, np.int32)
  camids = np.full(n, -1, np.int32) if camids is None else np.asarray(camids, np.int32)
  if labels.shape != (n,) or camids.shape != (n,):
    raise ValueError(f'labels {labels.shape} and camids {camids.shape}: expected one per item '
                     f'({n},)')
  if augment is None:
    if data_config is None:
      raise ValueError('train_batches needs data_config (crop/flip settings) or augment=')
    augment = augment_lib.reid_augmenter(data_config, height, width)
  parallel.check_batch_size(batch_size, mesh)
  order = epoch_permutation(n, seed, epoch)
  batches = _global_batches(order, batch_size, mesh.devices.size, drop_remainder)
  host_rows = [rows[parallel.host_slice(len(rows), mesh)] for rows in batches]

  def make_row(row) -> np.ndarray:
    row = int(row)
    if row < 0:
      return np.zeros((height, width, 3), np.uint8)
    image = augment(get_image(_item(items, row)), _rng(seed, _AUGMENT, epoch, row))
    return _check_image(image, height, width, 'the augmentation')

  def assemble(rows: np.ndarray, images: list[np.ndarray]) -> dict[str, jax.Array]:
    real = rows >= 0
    safe = np.where(real, rows, 0)
    return parallel.shard_batch({
        'image': np.stack(images),
        'label': np.where(real, labels[safe], -1).astype(np.int32),
        'index': rows.astype(np.int32),
        'camid': np.where(real, camids[safe], -1).astype(np.int32),
    }, mesh)

  # A plain generator expression: the checks above run at the call, not at the first next().
  return (assemble(rows, images) for rows, images in
          zip(host_rows, _prefetched(make_row, host_rows, prefetch, threads)))


def eval_batches(get_image: Callable[[Any], np.ndarray], indices, *, batch_size: int, height: int,
                 width: int, mesh: Mesh, prefetch: int = 2,
                 threads: int = 2) -> Iterator[tuple[jax.Array, int]]:
  """(uint8 [B,H,W,3] global batch sharded over the mesh, number of valid rows), in order.

  Images are resized to height x width, nothing random. The last batch is padded with zero images
  up to a multiple of the device count; only its first `valid` rows are real.
  """
  parallel.check_batch_size(batch_size, mesh)
  indices = list(indices)
  batches = _global_batches(np.arange(len(indices)), batch_size, mesh.devices.size,
                            drop_remainder=False)
  host_rows = [rows[parallel.host_slice(len(rows), mesh)] for rows in batches]

  def make_row(row) -> np.ndarray:
    row = int(row)
    if row < 0:
      return np.zeros((height, width, 3), np.uint8)
    return _check_image(augment_lib.resize(get_image(indices[row]), height, width), height, width,
                        'the resize')

  return ((parallel.shard_batch(np.stack(images), mesh), int((rows >= 0).sum()))
          for rows, images in zip(batches, _prefetched(make_row, host_rows, prefetch, threads)))


def camstyle_plan(seed: int, step: int, num_images: int, camstyle_config) -> dict[str, np.ndarray]:
  """The StarGAN's global batch of iteration `step`: image indices, crop offsets, flips and target
  draws (any integer; taken modulo the camera count).

  A function of (seed, step) alone, so that any number of devices or hosts, and a resumed run,
  see the same batches; an epoch visits every image once, in a shuffled order.
  """
  c = camstyle_config
  b = c.batch_size
  epoch, pos = divmod(step, steps_per_epoch(num_images, b))
  idx = _rng(seed, _CAMSTYLE, epoch).permutation(num_images)[pos * b:(pos + 1) * b]
  rng = _rng(seed, _CAMSTYLE, epoch, pos)
  return {'index': idx,
          'top': rng.integers(0, c.load_height - c.height + 1, b),
          'left': rng.integers(0, c.load_width - c.width + 1, b),
          'flip': rng.random(b) < 0.5,
          'target': rng.integers(0, 1 << 30, b)}


def camstyle_batches(get_image: Callable[[int], np.ndarray], camids, num_cameras: int,
                     camstyle_config, *, seed: int, start: int, stop: int, mesh: Mesh,
                     prefetch: int = 2, threads: int = 2
                     ) -> Iterator[tuple[int, dict[str, jax.Array]]]:
  """(iteration, batch) of the StarGAN for iterations [start, stop), sharded over the mesh.

  get_image(i) -> image i in any form `augment.resize` takes. A batch is {'image': uint8
  [B, height, width, 3] (HHL's resize to the load size, crop, flip), 'camid': the source cameras,
  'target': the cameras to translate to (int32 [B])}.
  """
  c = camstyle_config
  camids = np.asarray(camids, np.int32)
  rows = parallel.host_slice(c.batch_size, mesh)
  # Two lazy views of one plan stream: the decoder runs `prefetch` plans ahead of the assembly.
  plans, decode_plans = itertools.tee(camstyle_plan(seed, step, len(camids), c)
                                      for step in range(start, stop))

  def make_row(item) -> np.ndarray:
    plan, j = item
    image = augment_lib.resize_crop_flip(
        get_image(int(plan['index'][j])), top=int(plan['top'][j]), left=int(plan['left'][j]),
        flip=bool(plan['flip'][j]), load_height=c.load_height, load_width=c.load_width,
        height=c.height, width=c.width)
    return _check_image(image, c.height, c.width, 'the StarGAN augmentation')

  def assemble(plan: dict, images: list[np.ndarray]) -> dict[str, jax.Array]:
    idx = plan['index'][rows]
    return parallel.shard_batch({
        'image': np.stack(images),
        'camid': camids[idx],
        'target': (plan['target'][rows] % num_cameras).astype(np.int32),
    }, mesh)

  host_rows = ([(plan, j) for j in range(rows.start, rows.stop)] for plan in decode_plans)
  return ((step, assemble(plan, images)) for step, plan, images in
          zip(range(start, stop), plans, _prefetched(make_row, host_rows, prefetch, threads)))
