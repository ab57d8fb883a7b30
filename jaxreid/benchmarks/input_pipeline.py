"""Benchmark: the training input pipeline (thread pool + prefetch) vs a plain sequential loop.

  python -m jaxreid.benchmarks.input_pipeline                  # CUHK03 sample if present
  python -m jaxreid.benchmarks.input_pipeline --root=/data/Market-1501-v15.09.15
  python -m jaxreid.benchmarks.input_pipeline --batches=8      # a few seconds
  python -m jaxreid.benchmarks.input_pipeline --random         # generated JPEGs, no data needed

Both read the same array_record data set and do the same work per image (decode, random sized
rectangle crop, resize, flip, stack, shard onto the mesh); the baseline does it one image after
the other in the main thread (and decodes to arrays, as `ReidSplit.image` does). Without a data folder, random 64x128 JPEGs in Market layout are
written to a temporary folder first. Prints images/s at each size and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxreid import parallel
from jaxreid.data import augment, builders, pipeline
from jaxreid.data.layouts import DataError

CUHK03 = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / \
    'cuhk03_labeled_market'


def write_random_market(root: pathlib.Path, num_images: int, seed: int = 0) -> pathlib.Path:
  """A Market-layout folder of random-texture 64x128 JPEGs (about the size of real crops)."""
  rng = np.random.default_rng(seed)
  folders = {'bounding_box_train': num_images, 'query': 4, 'bounding_box_test': 4}
  for folder, count in folders.items():
    (root / folder).mkdir(parents=True, exist_ok=True)
    for k in range(count):
      # Smooth random colours (a noise image would make JPEG decoding unrealistically slow).
      small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
      image = Image.fromarray(small).resize((64, 128), Image.BICUBIC)
      image.save(root / folder / f'{k // 4 + 1:04d}_c{k % 2 + 1}s1_{k:06d}_00.jpg', quality=90)
  return root


def sequential_images_per_s(split, data_config, mesh, batch_size, num_batches, height,
                            width) -> float:
  """The baseline: decode + augment each image in turn, stack, shard; no threads, no prefetch."""
  order = pipeline.epoch_permutation(len(split), 0, 0)
  start = time.perf_counter()
  for b in range(num_batches):
    rows = order[b * batch_size:(b + 1) * batch_size]
    images = [augment.reid_train_augment(
        split.image(int(r)), np.random.default_rng([0, int(r)]), height=height, width=width,
        area=(data_config.crop_area_min, data_config.crop_area_max),
        aspect=(data_config.crop_aspect_min, data_config.crop_aspect_max),
        tries=data_config.crop_tries, flip=data_config.flip) for r in rows]
    batch = parallel.shard_batch({'image': np.stack(images), 'index': rows.astype(np.int32)},
                                 mesh)
    jax.block_until_ready(batch)
  return num_batches * batch_size / (time.perf_counter() - start)


def pipeline_images_per_s(split, data_config, mesh, batch_size, num_batches, height, width,
                          threads, prefetch) -> float:
  """jaxreid.data.pipeline.train_batches over the same images (decoded straight into PIL)."""
  start = time.perf_counter()
  batches = pipeline.train_batches(split.pil_image, np.arange(len(split)), np.zeros(len(split)),
                                   batch_size=batch_size, height=height, width=width, seed=0,
                                   epoch=0, mesh=mesh, data_config=data_config,
                                   camids=split.camids, threads=threads, prefetch=prefetch)
  for b, batch in enumerate(batches):
    jax.block_until_ready(batch)
    if b + 1 == num_batches:
      break
  return num_batches * batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default='', help='a Market-layout folder (default: CUHK03 sample)')
  parser.add_argument('--random', action='store_true',
                      help='use generated random JPEGs even when the CUHK03 sample is present')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--batches', type=int, default=30, help='batches timed per measurement')
  parser.add_argument('--threads', type=int, default=min(16, os.cpu_count() or 1))
  parser.add_argument('--prefetch', type=int, default=2)
  parser.add_argument('--sizes', default='256x128,128x64', help='HxW,HxW,...')
  args = parser.parse_args(argv)

  defaults = ml_collections.ConfigDict({
      'crop_area_min': 0.64, 'crop_area_max': 1.0, 'crop_aspect_min': 2.0,
      'crop_aspect_max': 3.0, 'crop_tries': 10, 'flip': True})
  mesh = parallel.make_mesh()
  batch_size = -(-args.batch_size // mesh.devices.size) * mesh.devices.size
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    root = args.root or (CUHK03 if CUHK03.is_dir() and not args.random else '')
    if not root:
      root = write_random_market(tmp / 'random_market', batch_size * (args.batches + 2))
    config = ml_collections.ConfigDict({'name': 'folder', 'root': str(root)})
    try:
      split = builders.load_split(config, 'train', tmp / 'tfds')
    except DataError as e:
      raise SystemExit(f'error: {e}') from None
    num_batches = min(args.batches, len(split) // batch_size)
    print(f'input pipeline: {len(split)} images from {root}; batch {batch_size} on '
          f'{mesh.devices.size} {jax.devices()[0].platform} device(s); {os.cpu_count()} CPUs; '
          f'{num_batches} batches per measurement')
    print(f'{"size":>8}  {"sequential img/s":>16}  {"pipeline, 0 threads":>19}  '
          f'{f"pipeline, {args.threads} threads, prefetch {args.prefetch}":>34}  ratio')
    for size in args.sizes.split(','):
      height, width = (int(v) for v in size.lower().split('x'))
      # Warm-up: page cache, jit of the sharding transfer, thread start.
      pipeline_images_per_s(split, defaults, mesh, batch_size, 1, height, width, 2, 1)
      base = sequential_images_per_s(split, defaults, mesh, batch_size, num_batches, height,
                                     width)
      inline = pipeline_images_per_s(split, defaults, mesh, batch_size, num_batches, height,
                                     width, 0, 0)
      fast = pipeline_images_per_s(split, defaults, mesh, batch_size, num_batches, height, width,
                                   args.threads, args.prefetch)
      print(f'{size:>8}  {base:16.0f}  {inline:19.0f}  {fast:34.0f}  {fast / base:5.2f}x')


if __name__ == '__main__':
  main()
