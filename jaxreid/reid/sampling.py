"""Support-set sampling: each epoch visits every real training image once, in a shuffled order,
and shows either the image itself or one of its camera-style fakes, labelled with its cluster.

The random draws are the input pipeline's (`pipeline.support_slots`, a function of seed and epoch
only), so an epoch is the same on any number of devices or hosts and after a resume.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxreid.data import pipeline


def epoch_items(num_images: int, support_size: int, *, seed: int, epoch: int,
                real_prob: float = -1.0) -> np.ndarray:
  """[num_images, 2] rows (real image i, support slot): slot 0 the image, s >= 1 its fake s.

  real_prob < 0: uniform over the support set of `support_size` members; otherwise the real image
  with probability real_prob and a uniformly drawn fake otherwise. support_size 1: always real.
  """
  if support_size < 1:
    raise ValueError(f'support_size={support_size!r}: expected at least 1 (the real image)')
  if real_prob > 1:
    raise ValueError(f'config.train.real_prob={real_prob!r}: expected a probability, or < 0 '
                     'for uniform over the support set')
  slots = pipeline.support_slots(num_images, support_size, seed=seed, epoch=epoch,
                                 real_prob=real_prob)
  return pipeline.support_items(num_images, slots)


def support_batches(get_support: Callable[[int, int], np.ndarray], support_size: int,
                    labels: np.ndarray, *, config: ml_collections.ConfigDict, epoch: int,
                    mesh: Mesh, seed: int | None = None,
                    slot_camera: Callable[[int, int], int] | None = None
                    ) -> Iterator[dict[str, jax.Array]]:
  """One epoch of augmented, sharded training batches drawn from the support sets.

  get_support(i, slot) -> uint8 image (e.g. support_sets.SupportSets.support_image);
  labels: the cluster label of each real image; slot_camera(i, slot) fills 'camid' if given.
  Batches have config.train.batch_size rows; the last incomplete batch is dropped, as in BUC.
  """
  labels = np.asarray(labels)
  seed = config.seed if seed is None else seed
  items = epoch_items(len(labels), support_size, seed=seed, epoch=epoch,
                      real_prob=config.train.real_prob)
  camids = None
  if slot_camera is not None:
    camids = np.array([slot_camera(int(i), int(s)) for i, s in items], np.int32)
  return pipeline.train_batches(
      lambda item: get_support(*item), items, labels, batch_size=config.train.batch_size,
      height=config.data.height, width=config.data.width, seed=seed, epoch=epoch, mesh=mesh,
      data_config=config.data, camids=camids, drop_remainder=True,
      prefetch=config.data.prefetch, threads=config.data.decode_threads)


def steps_per_epoch(num_images: int, config: ml_collections.ConfigDict) -> int:
  """Train steps in one epoch over `num_images` real images."""
  return pipeline.steps_per_epoch(num_images, config.train.batch_size, drop_remainder=True)
