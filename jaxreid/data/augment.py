"""Training augmentation (host, numpy + PIL) and ImageNet normalisation (device, jnp).

Batches travel to the device as uint8 (4x less host->device traffic than float32); the crop,
resize and flip run on the host in the input pipeline's threads, and `normalize` runs at the start
of each jitted step. Every random choice comes from the `np.random.Generator` passed in, which the
pipeline derives from (seed, epoch, item), so results do not depend on threads or devices.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxreid.data import images as images_lib

# An augmentation: (uint8 HxWx3 image, generator) -> uint8 image of the training size.
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return images_lib.to_rgb(image)
  return Image.fromarray(images_lib.as_rgb_array(image))


def resize(image, height: int, width: int,
           box: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """Bilinear resize of a uint8 image (array in any layout as_rgb_array takes, or PIL image) to
  RGB height x width; `box` = (x0, y0, x1, y1) resizes only that region."""
  if not isinstance(image, Image.Image):
    image = images_lib.as_rgb_array(image)
    if box is None and image.shape[:2] == (height, width):
      return image
  return np.asarray(_to_pil(image).resize((width, height), Image.BILINEAR, box=box))


def random_resized_rect_crop(image, rng: np.random.Generator, height: int, width: int, *,
                             area: tuple[float, float] = (0.64, 1.0),
                             aspect: tuple[float, float] = (2.0, 3.0),
                             tries: int = 10) -> np.ndarray:
  """BUC's random sized rectangle crop: a box of area fraction U(area) and h/w ratio U(aspect)
  at a random place, resized to height x width; after `tries` boxes that do not fit, a plain resize.
  """
  image = _to_pil(image)
  iw, ih = image.size
  for _ in range(tries):
    target = rng.uniform(*area) * ih * iw
    ratio = rng.uniform(*aspect)
    h = int(round(math.sqrt(target * ratio)))
    w = int(round(math.sqrt(target / ratio)))
    if 1 <= h <= ih and 1 <= w <= iw:
      y0 = int(rng.integers(0, ih - h + 1))
      x0 = int(rng.integers(0, iw - w + 1))
      return resize(image, height, width, box=(x0, y0, x0 + w, y0 + h))
  return resize(image, height, width)


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Mirrors the image left-right with probability p (a view: the batch stacking copies it)."""
  return image[:, ::-1] if rng.random() < p else image


def reid_train_augment(image: np.ndarray, rng: np.random.Generator, *, height: int, width: int,
                       area: tuple[float, float] = (0.64, 1.0),
                       aspect: tuple[float, float] = (2.0, 3.0), tries: int = 10,
                       flip: bool = True) -> np.ndarray:
  """The re-ID training augmentation (BUC): random sized rectangle crop -> HxW -> random flip."""
  out = random_resized_rect_crop(image, rng, height, width, area=area, aspect=aspect, tries=tries)
  return random_flip(out, rng) if flip else out


def reid_augmenter(data_config, height: int | None = None, width: int | None = None) -> Augment:
  """The re-ID training augmentation with the crop/flip settings of `config.data`."""
  return functools.partial(
      reid_train_augment, height=height or data_config.height, width=width or data_config.width,
      area=(data_config.crop_area_min, data_config.crop_area_max),
      aspect=(data_config.crop_aspect_min, data_config.crop_aspect_max),
      tries=data_config.crop_tries, flip=data_config.flip)


def resize_crop_flip(image, *, top: int, left: int, flip: bool, load_height: int,
                     load_width: int, height: int, width: int) -> np.ndarray:
  """HHL's StarGAN augmentation: resize to the load size, the height x width window at (top, left),
  mirrored if `flip` (`pipeline.camstyle_plan` draws the offsets and flips of a batch at once)."""
  loaded = resize(image, load_height, load_width)
  if top < 0 or left < 0 or top + height > load_height or left + width > load_width:
    raise ValueError(f'crop of {height}x{width} at ({top}, {left}) from a {load_height}x'
                     f'{load_width} image: expected the window inside it (load size >= crop size)')
  out = loaded[top:top + height, left:left + width]
  return out[:, ::-1] if flip else out


def normalize(images, mean, std, dtype=jnp.float32) -> jnp.ndarray:
  """Per-channel (x - mean) / std for device code: uint8 input is scaled to [0, 1] first (float
  input must already be in [0, 1]). Call it at the start of a jitted step; with mean = std = 0.5
  it maps to the [-1, 1] range the StarGAN uses."""
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x - mean) / std).astype(dtype)
