"""The paper's support set (Sec. III-B, III-C.2): a real image and its L-1 camera-style fakes.

Image i of camera c has the slots 0..L-1: slot 0 is the real image, slot l >= 1 its fake for the
l-th of the other cameras in ascending order (`target_cameras_of`). Its images are read through
`SupportSets` (training, feature extraction); its features are one [N, L, d] array
(`support_array`), which the distance kernel (clustering/distance.py) and the merge read. Which
slot an epoch trains on is drawn by the input pipeline (`data.pipeline.support_slots`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from jaxreid.camstyle.store import FakeStore


def target_cameras_of(camid: int, num_cameras: int) -> tuple[int, ...]:
  """The cameras an image of camera `camid` gets fakes for: all others, ascending."""
  return tuple(k for k in range(num_cameras) if k != camid)


class SupportSets:
  """Image i's support set: slot 0 the real image, slot l >= 1 its fake for the l-th other camera."""

  def __init__(self, real_image: Callable[[int], np.ndarray], store: FakeStore | None,
               camids: np.ndarray | None = None):
    self._real = real_image
    self.store = store
    self._camids = store.camids if store is not None else camids

  @property
  def size(self) -> int:
    """Images per support set: L with fakes, 1 without."""
    return 1 if self.store is None else self.store.num_cameras

  def support_image(self, i: int, slot: int) -> np.ndarray:
    """uint8 HxWx3: the real image (slot 0) or a fake (slot >= 1)."""
    if slot == 0:
      return self._real(int(i))
    if self.store is None or not 0 < slot < self.size:
      raise IndexError(f'support slot {slot}: expected 0..{self.size - 1}')
    return self.store.fake(i, self.store.target_cameras(i)[slot - 1])

  def slot_camera(self, i: int, slot: int) -> int:
    """The camera whose style slot `slot` of image i shows."""
    if self._camids is None:
      raise ValueError('slot_camera needs camera ids (a store, or camids=...)')
    own = int(self._camids[int(i)])
    if slot == 0:
      return own
    return target_cameras_of(own, self.store.num_cameras)[slot - 1]


def aligned_empty(shape: tuple[int, ...], dtype=np.float32, align: int = 64) -> np.ndarray:
  """An uninitialised C-contiguous array at a 64-byte aligned address: XLA on CPU uses such a buffer
  in place, where it copies an unaligned one (np.empty is typically 16-byte aligned)."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = (-raw.ctypes.data) % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def support_array(features: np.ndarray | jax.Array, fake_features: np.ndarray | jax.Array | None
                  ) -> np.ndarray | jax.Array:
  """float32 S [N, L, d] with S[:, 0] = features and S[:, 1:] = fake_features, without a copy when
  the two are already the slots of one such array (or there are no fakes), else one aligned copy.

  Jax Arrays (features kept on the device) give a jax.Array S built there, with their sharding.
  """
  if isinstance(features, jax.Array) and (fake_features is None
                                          or isinstance(fake_features, jax.Array)):
    features = jnp.asarray(features, jnp.float32)
    if fake_features is None:
      return features[:, None]
    return jnp.concatenate([features[:, None], jnp.asarray(fake_features, jnp.float32)], axis=1)
  features = np.asarray(features, np.float32)
  n, d = features.shape
  if fake_features is None:
    return features[:, None]
  fakes = np.asarray(fake_features, np.float32)
  num_sets = fakes.shape[1] + 1
  item = features.itemsize
  row = num_sets * d * item
  # Both views tile one (N, L, d) C-order block exactly: address it as that block, no copy.
  if (features.strides == (row, item) and fakes.strides == (row, d * item, item)
      and fakes.ctypes.data == features.ctypes.data + d * item):
    return np.lib.stride_tricks.as_strided(features, (n, num_sets, d), (row, d * item, item),
                                           writeable=False)
  out = aligned_empty((n, num_sets, d))
  out[:, 0] = features
  out[:, 1:] = fakes
  return out
