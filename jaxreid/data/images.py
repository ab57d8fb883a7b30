"""Image files in, RGB uint8 out: validation at build time, decoding at read time.

Every stored image is 3-channel RGB: grayscale, palette, RGBA, CMYK and 16-bit files are converted
once when a data set is built, and corrupt or truncated files are found then (by fully decoding
them), so that reading during training never meets a bad image.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxreid.data.layouts import DataError

# Formats whose bytes are stored as they are when the image is already RGB (no re-encoding loss).
_KEPT_FORMATS = ('JPEG', 'PNG')
_EXIF_ORIENTATION = 0x0112


class CorruptImageError(DataError):
  """An image file cannot be decoded (truncated, not an image, unsupported mode)."""


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
  """16-bit / 32-bit / float grayscale -> 8-bit RGB (PIL's own conversion clips instead)."""
  a = np.asarray(image, dtype=np.float64)
  if a.size and a.max() > 255:
    a = a / 257.0  # 16-bit range -> 8-bit
  a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
  return Image.fromarray(np.repeat(a[..., None], 3, axis=-1), 'RGB')


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL image -> 3-channel 8-bit RGB (alpha dropped, grayscale repeated, CMYK converted)."""
  if image.mode == 'RGB':
    return image
  if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
    return _high_depth_to_rgb(image)
  if image.mode in ('P', 'PA'):
    image = image.convert('RGBA')
  try:
    return image.convert('RGB')
  except ValueError as e:
    raise CorruptImageError(f'unsupported image mode {image.mode!r}') from e


def as_rgb_array(image) -> np.ndarray:
  """An HxW, HxWx1, HxWx3 or HxWx4 array (or PIL image) -> uint8 HxWx3 RGB."""
  if isinstance(image, Image.Image):
    return np.asarray(to_rgb(image))
  a = np.asarray(image)
  if a.dtype != np.uint8:
    raise DataError(f'image array of dtype {a.dtype}: expected uint8 pixels in [0, 255]')
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise DataError(f'image array of shape {a.shape}: expected HxW, HxWx1, HxWx3 or HxWx4')
  if a.shape[-1] == 1:
    return np.repeat(a, 3, axis=-1)
  return a[..., :3] if a.shape[-1] == 4 else a


def _open_fully(data: bytes, name: str) -> Image.Image:
  """Decodes every pixel (PIL is lazy: a truncated file only fails on load)."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
          ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CorruptImageError(f'{name}: cannot decode ({reason})') from e
  if image.width < 1 or image.height < 1:
    raise CorruptImageError(f'{name}: empty image ({image.width}x{image.height})')
  return image


# Images with a longer side are far above what a re-ID model reads: worth one warning per split.
LARGE_SIDE = 2000


def encode_for_store(path: str | pathlib.Path) -> bytes:
  """Validated bytes of an image file, re-encoded as PNG unless it is already an upright RGB
  JPEG/PNG. Raises CorruptImageError (one line naming the file) when it does not decode."""
  return encode_for_store_with_size(path)[0]


def encode_for_store_with_size(path: str | pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """encode_for_store, plus the image's (width, height)."""
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise CorruptImageError(f'{path.name}: cannot read ({e.strerror})') from e
  image = _open_fully(data, path.name)
  orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
  if image.format in _KEPT_FORMATS and image.mode == 'RGB' and orientation in (0, 1):
    return data, image.size
  try:
    upright = ImageOps.exif_transpose(image) if orientation not in (0, 1) else image
    rgb = to_rgb(upright)
  except CorruptImageError as e:
    raise CorruptImageError(f'{path.name}: {e}') from e
  buffer = io.BytesIO()
  rgb.save(buffer, format='PNG')
  return buffer.getvalue(), rgb.size


def decode_rgb(data: bytes) -> np.ndarray:
  """Stored image bytes -> uint8 HxWx3 RGB array."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(to_rgb(image))


def decode_pil(data: bytes) -> Image.Image:
  """Stored image bytes -> decoded RGB PIL image (saves a copy when PIL does the augmentation)."""
  image = Image.open(io.BytesIO(data))
  image.load()
  return to_rgb(image)


def load_rgb(path: str | pathlib.Path) -> np.ndarray:
  """An image file -> uint8 HxWx3 RGB array (one-line CorruptImageError when it is unreadable)."""
  return decode_rgb(encode_for_store(path))
