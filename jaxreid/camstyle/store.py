"""The store of camera-style fakes: random access by (image index, target camera).

Layout of a store directory:
  index.json            {"format", "num_images", "num_cameras", "chunk_size", "codec"}
  camids.npy            the source camera (0-based) of every training image
  chunks/chunk_NNNNN.array_record  images [N * chunk_size, (N + 1) * chunk_size): an array_record
                        file, one record per fake (group_size 1: random access to each); for each
                        image in order, its fakes for the other cameras in ascending camera order,
                        each an encoded JPEG / PNG.
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
One store may serve several decoding threads at once (each chunk's reader is called under its own
lock; decoding runs outside it); a pickled store (a worker process) reopens its files.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import threading
from typing import Sequence

from array_record.python import array_record_module
import numpy as np
from PIL import Image

from jaxreid import atomic
from jaxreid.support_sets import target_cameras_of

# v1 had its own chunk format (.bin: images, offsets, footer); v2 chunks are array_record files.
FORMAT = 'jaxreid-fakes-v2'
# One record per group: reading a fake reads (and decompresses) only its own bytes. The default
# zstd still shrinks the synthetic set's JPEG fakes by ~4% (their headers) for a few us more a read
# (decoding one takes hundreds).
_WRITER_OPTIONS = 'group_size:1'
# Random access: no readahead, no reader threads of its own.
_READER_OPTIONS = 'readahead_buffer_size:0,max_parallelism:0'


class StoreError(ValueError):
  """A fakes store is missing, incomplete or not one; the message is one line saying which."""


def chunk_path(root: pathlib.Path, chunk: int) -> pathlib.Path:
  """Where chunk number `chunk` of a store lives."""
  return pathlib.Path(root) / 'chunks' / f'chunk_{chunk:05d}.array_record'


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
  """Writes one chunk file (an array_record file, a record per fake) atomically; returns its size.

  The same records give the same bytes (array_record writes no time or path), so a resumed
  store's chunks equal an uninterrupted one's.
  """
  with atomic.writing(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
    try:
      for e in encoded:
        writer.write(e)
    finally:
      writer.close()
    return tmp.stat().st_size


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
    if problem := _format_problem(old):
      raise StoreError(f'{path}: fakes store in the {problem}; remove {root} or run the whole '
                       'command again (it regenerates the fakes)')
    old_camids = np.load(root / 'camids.npy') if (root / 'camids.npy').exists() else None
    if old != index or old_camids is None or not np.array_equal(old_camids, camids):
      raise StoreError(f'{root} holds fakes of other images or settings ({old}); remove it or use '
                       'a new work dir')
    return
  with atomic.writing(root / 'camids.npy') as tmp:
    np.save(tmp, np.asarray(camids, np.int32))
  atomic.write_text(path, json.dumps(index, indent=2))


def _format_problem(index: dict) -> str | None:
  """Why an index is of another store format (None if it is this one's)."""
  found = index.get('format')
  return None if found == FORMAT else f'old format {found!r}, expected {FORMAT!r}'


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

  Opens the file and reads its record count, no image, so checking a whole store is cheap. A
  truncated file does not open (array_record's footer is at its end).
  """
  if not path.is_file():
    return f'{path.name} missing'
  try:
    reader = array_record_module.ArrayRecordReader(str(path), _READER_OPTIONS)
    ok = reader.ok()
    count = reader.num_records() if ok else 0
    reader.close()  # a reader that failed to open raises its reason here
  except (RuntimeError, ValueError, OSError) as e:
    return f'{path.name} damaged (not array_record: {str(e).split(";")[0].splitlines()[0]})'
  if not ok:
    return f'{path.name} damaged (not array_record)'
  if count != num_records:
    return f'{path.name} damaged ({count} records, expected {num_records})'
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
  if problem := _format_problem(index):
    return [f'{index_path.name} in the {problem}']
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

  Fakes are derived data: a damaged chunk or index, or a store of an old format, is rebuilt from
  the generator, not kept.
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
    if _format_problem(index):
      # Every chunk is redone: the index, camera ids and the old chunks go (the HHL folder's files
      # are overwritten as the new chunks are written).
      for old in (root / 'chunks').glob('chunk_*'):
        old.unlink()
      (root / 'camids.npy').unlink(missing_ok=True)
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
    self._readers: dict[int, tuple[array_record_module.ArrayRecordReader, threading.Lock]] = {}
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
    if problem := _format_problem(index):
      raise StoreError(f'{index_path}: fakes store in the {problem}; run the same command again '
                       'to regenerate it')
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
    reader, lock = self._chunk(chunk)
    try:
      with lock:  # one call at a time per reader; decoding happens outside
        return reader.read([record])[0]
    except RuntimeError as e:
      raise StoreError(f'{chunk_path(self.root, chunk)}: record {record} is damaged '
                       f'({str(e).splitlines()[0]}); delete the file and run the same command '
                       'again to regenerate it') from e

  def fake(self, i: int, target_cam: int) -> np.ndarray:
    """The fake of image i under camera `target_cam`: uint8 HxWx3 RGB."""
    return decode(self.fake_bytes(i, target_cam))

  def nbytes(self) -> int:
    """Size of the chunk files on disk."""
    return sum(p.stat().st_size for p in (self.root / 'chunks').glob('chunk_*.array_record'))

  def close(self) -> None:
    with self._lock:
      for reader, lock in self._readers.values():
        with lock:
          reader.close()
      self._readers.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def __getstate__(self) -> dict:
    # Picklable for worker processes: readers and locks are per process, reopened lazily.
    return {k: v for k, v in self.__dict__.items() if k not in ('_readers', '_lock')}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._readers, self._lock = {}, threading.Lock()

  def _check(self, i) -> int:
    i = int(i)
    if not 0 <= i < self.num_images:
      raise IndexError(f'image index {i} outside the store of {self.num_images} images')
    return i

  def _chunk(self, chunk: int) -> tuple[array_record_module.ArrayRecordReader, threading.Lock]:
    with self._lock:
      if chunk not in self._readers:
        path = chunk_path(self.root, chunk)
        reader = array_record_module.ArrayRecordReader(str(path), _READER_OPTIONS)
        if not reader.ok():
          try:
            reader.close()
          except RuntimeError:
            pass  # its reason; the line below says what to do
          raise StoreError(f'{path}: not an array_record file; delete it and run the same command '
                           'again to regenerate it')
        self._readers[chunk] = (reader, threading.Lock())
      return self._readers[chunk]
