"""The store of camera-style fakes: random access by (image index, target camera).

Layout of a store directory:
  index.json            {"format", "num_images", "num_cameras", "chunk_size", "codec"}
  camids.npy            the source camera (0-based) of every training image
  chunks/chunk_NNNNN.bin  images [N * chunk_size, (N + 1) * chunk_size): for each image in order,
                        its fakes for the other cameras in ascending camera order, each an encoded
                        JPEG / PNG; then the record offsets (little-endian int64, count + 1 of
                        them), then a 16-byte footer (int64 count, magic b'JRFAKES1').
  hhl/<name>_fake_<k>.jpg  optional: HHL's folder convention (k the 1-based target camera).

A chunk file appears only complete (jaxreid.atomic), so its existence marks the chunk
done. Fakes have the size of their source image.

The re-ID side reads a store through
  store = FakeStore.open(path)
  store.num_images, store.num_cameras
  store.target_cameras(i)       ascending, i's own camera excluded (L - 1 of them)
  store.fake(i, target_cam)     uint8 HxWx3 RGB
  sets = jaxreid.support_sets.SupportSets(split.image, store)  (store None: real images only)
  sets.size                      L with a store, 1 without
  sets.support_image(i, slot)    slot 0: the real image; slot l >= 1: the fake for the l-th
                                 camera of target_cameras(i)
  sets.slot_camera(i, slot)      the camera that image shows
Reads use os.pread, so one store may serve several decoding threads at once; a pickled store
(a worker process) reopens its files.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct
import threading
from typing import Sequence

import numpy as np
from PIL import Image

from jaxreid import atomic
from jaxreid.support_sets import target_cameras_of

FORMAT = 'jaxreid-fakes-v1'
_MAGIC = b'JRFAKES1'
_FOOTER = struct.Struct('<q8s')


class StoreError(ValueError):
  """A fakes store is missing, incomplete or not one; the message is one line saying which."""


def chunk_path(root: pathlib.Path, chunk: int) -> pathlib.Path:
  """Where chunk number `chunk` of a store lives."""
  return pathlib.Path(root) / 'chunks' / f'chunk_{chunk:05d}.bin'


def encode(image: np.ndarray, codec: str, quality: int = 95) -> bytes:
  """uint8 HxWx3 RGB -> JPEG or PNG bytes."""
  buf = io.BytesIO()
  if codec == 'jpeg':
    Image.fromarray(image).save(buf, format='JPEG', quality=int(quality))
  else:
    Image.fromarray(image).save(buf, format='PNG', compress_level=6)
  return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
  """Encoded image bytes -> uint8 HxWx3 RGB."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


def write_chunk(path: pathlib.Path, encoded: Sequence[bytes]) -> int:
  """Writes one chunk file atomically; returns its size in bytes."""
  path.parent.mkdir(parents=True, exist_ok=True)
  offsets = np.zeros(len(encoded) + 1, '<i8')
  offsets[1:] = np.cumsum([len(e) for e in encoded])
  with atomic.writing(path) as tmp, open(tmp, 'wb') as f:
    for e in encoded:
      f.write(e)
    f.write(offsets.tobytes())
    f.write(_FOOTER.pack(len(encoded), _MAGIC))
  return int(offsets[-1]) + offsets.nbytes + _FOOTER.size


def chunk_ranges(num_images: int, chunk_size: int) -> list[range]:
  """The image indices of each chunk."""
  return [range(s, min(s + chunk_size, num_images)) for s in range(0, num_images, chunk_size)]



def write_index(root: pathlib.Path, camids: np.ndarray, num_cameras: int, chunk_size: int,
                codec: str) -> None:
  """Starts a store (or checks that an existing one was started for the same images)."""
  root = pathlib.Path(root)
  index = {'format': FORMAT, 'num_images': int(len(camids)), 'num_cameras': int(num_cameras),
           'chunk_size': int(chunk_size), 'codec': codec}
  path = root / 'index.json'
  if path.exists():
    old = _read_index(path)
    old_camids = np.load(root / 'camids.npy') if (root / 'camids.npy').exists() else None
    if old != index or old_camids is None or not np.array_equal(old_camids, camids):
      raise StoreError(f'{root} holds fakes of other images or settings ({old}); remove it or use '
                       'a new work dir')
    return
  with atomic.writing(root / 'camids.npy') as tmp:
    np.save(tmp, np.asarray(camids, np.int32))
  atomic.write_text(path, json.dumps(index, indent=2))


def _read_index(path: pathlib.Path) -> dict:
  try:
    index = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StoreError(f'{path} is damaged (not JSON: {e}); run the same command again to '
                     'regenerate the fakes') from e
  if not isinstance(index, dict) or not {'num_images', 'num_cameras', 'chunk_size'} <= set(index):
    raise StoreError(f'{path} is damaged (expected the store\'s index); run the same command '
                     'again to regenerate the fakes')
  return index


def chunk_problem(path: pathlib.Path, num_records: int) -> str | None:
  """Why the chunk file at `path` is not a complete chunk of `num_records` fakes (None if it is).

  Reads only the footer and offsets, so checking a whole store is cheap.
  """
  if not path.is_file():
    return f'{path.name} missing'
  size = path.stat().st_size
  expected_tail = (num_records + 1) * 8 + _FOOTER.size
  if size < expected_tail:
    return f'{path.name} truncated ({size} bytes)'
  with open(path, 'rb') as f:
    f.seek(size - expected_tail)
    tail = f.read(expected_tail)
  count, magic = _FOOTER.unpack(tail[-_FOOTER.size:])
  if magic != _MAGIC or count != num_records:
    return f'{path.name} damaged (bad footer)'
  offsets = np.frombuffer(tail[:-_FOOTER.size], '<i8')
  if offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or offsets[-1] != size - expected_tail:
    return f'{path.name} damaged (bad offsets)'
  return None


def check(root: str | os.PathLike) -> list[str]:
  """What is missing or damaged in the store at `root` (empty when it is complete)."""
  root = pathlib.Path(root)
  index_path = root / 'index.json'
  if not index_path.is_file():
    return [f'{index_path.name} missing']
  try:
    index = _read_index(index_path)
  except StoreError:
    return [f'{index_path.name} damaged']
  if not (root / 'camids.npy').is_file():
    return ['camids.npy missing']
  fakes_per_image = int(index['num_cameras']) - 1
  problems = []
  for k, rows in enumerate(chunk_ranges(int(index['num_images']), int(index['chunk_size']))):
    problem = chunk_problem(chunk_path(root, k), len(rows) * fakes_per_image)
    if problem:
      problems.append(problem)
  return problems


def remove_damaged(root: str | os.PathLike) -> list[str]:
  """Deletes what `check` finds damaged (so a generation run redoes it); returns the problems.

  Fakes are derived data: a damaged chunk or index is rebuilt from the generator, not kept.
  """
  root = pathlib.Path(root)
  problems = check(root)
  if not problems:
    return []
  index_path = root / 'index.json'
  if index_path.is_file():
    try:
      index = _read_index(index_path)
    except StoreError:
      index_path.unlink()
      return problems
    if not (root / 'camids.npy').is_file():
      index_path.unlink()  # write_index starts the store afresh; whole chunks are still reused
      return problems
    fakes_per_image = int(index['num_cameras']) - 1
    for k, rows in enumerate(chunk_ranges(int(index['num_images']), int(index['chunk_size']))):
      path = chunk_path(root, k)
      if path.is_file() and chunk_problem(path, len(rows) * fakes_per_image):
        path.unlink()
  return problems


class FakeStore:
  """Read access to a finished store (see the module docstring for the layout)."""

  def __init__(self, root: pathlib.Path, index: dict, camids: np.ndarray):
    self.root = pathlib.Path(root)
    self.num_images = int(index['num_images'])
    self.num_cameras = int(index['num_cameras'])
    self.chunk_size = int(index['chunk_size'])
    self.codec = index['codec']
    self.camids = camids
    self._fds: dict[int, int] = {}
    self._offsets: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  @classmethod
  def open(cls, path: str | os.PathLike) -> 'FakeStore':
    """Opens a complete store; one clear line if it is absent, foreign, unfinished or damaged."""
    root = pathlib.Path(path)
    index_path = root / 'index.json'
    if not index_path.is_file():
      raise StoreError(f'{root}: no fakes store here (expected {index_path}); run the same command '
                       'again to generate the fakes')
    index = _read_index(index_path)
    if index.get('format') != FORMAT:
      raise StoreError(f'{index_path}: format {index.get("format")!r}, expected {FORMAT!r}')
    problems = check(root)
    if problems:
      total = len(chunk_ranges(int(index['num_images']), int(index['chunk_size'])))
      bad = sum(p.startswith('chunk_') for p in problems)
      raise StoreError(f'{root}: fakes store is incomplete ({total - bad} of {total} chunks): '
                       f'{", ".join(problems[:3])}{" ..." if len(problems) > 3 else ""}; run the '
                       'same command again to regenerate what is missing')
    return cls(root, index, np.load(root / 'camids.npy'))

  def __len__(self) -> int:
    return self.num_images

  @property
  def fakes_per_image(self) -> int:
    return self.num_cameras - 1

  def target_cameras(self, i: int) -> tuple[int, ...]:
    """Cameras with a fake of image i: every camera but its own, ascending."""
    return target_cameras_of(int(self.camids[self._check(i)]), self.num_cameras)

  def fake_bytes(self, i: int, target_cam: int) -> bytes:
    """The encoded fake of image i under camera `target_cam`."""
    i = self._check(i)
    own = int(self.camids[i])
    if not 0 <= target_cam < self.num_cameras or target_cam == own:
      raise KeyError(f'image {i} (camera {own}) has no fake for camera {target_cam}; expected one '
                     f'of {self.target_cameras(i)}')
    chunk, first = divmod(i, self.chunk_size)
    record = first * self.fakes_per_image + target_cam - (target_cam > own)
    fd, offsets = self._chunk(chunk)
    start, stop = int(offsets[record]), int(offsets[record + 1])
    return os.pread(fd, stop - start, start)

  def fake(self, i: int, target_cam: int) -> np.ndarray:
    """The fake of image i under camera `target_cam`: uint8 HxWx3 RGB."""
    return decode(self.fake_bytes(i, target_cam))

  def nbytes(self) -> int:
    """Size of the chunk files on disk."""
    return sum(p.stat().st_size for p in (self.root / 'chunks').glob('chunk_*.bin'))

  def close(self) -> None:
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def __getstate__(self) -> dict:
    # Picklable for worker processes: open files and the lock are per process, reopened lazily.
    return {k: v for k, v in self.__dict__.items() if k not in ('_fds', '_offsets', '_lock')}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._fds, self._offsets, self._lock = {}, {}, threading.Lock()

  def _check(self, i) -> int:
    i = int(i)
    if not 0 <= i < self.num_images:
      raise IndexError(f'image index {i} outside the store of {self.num_images} images')
    return i

  def _chunk(self, chunk: int) -> tuple[int, np.ndarray]:
    with self._lock:
      if chunk not in self._fds:
        path = chunk_path(self.root, chunk)
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        count, magic = _FOOTER.unpack(os.pread(fd, _FOOTER.size, size - _FOOTER.size))
        if magic != _MAGIC:
          os.close(fd)
          raise StoreError(f'{path}: not a fakes chunk (bad footer)')
        nbytes = (count + 1) * 8
        self._offsets[chunk] = np.frombuffer(
            os.pread(fd, nbytes, size - _FOOTER.size - nbytes), '<i8')
        self._fds[chunk] = fd
      return self._fds[chunk], self._offsets[chunk]
