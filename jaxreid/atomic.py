"""Files and folders that appear whole or not at all: written beside their place, then renamed.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


def _umask() -> int:
  # os.umask can only be read by setting it; done once, at import, before any threads write.
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _umask()
# mkstemp / mkdtemp make 0600 / 0700; what a run writes gets the mode of any file it creates.
FILE_MODE = 0o666 & ~_UMASK
FOLDER_MODE = 0o777 & ~_UMASK


def _fsync(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A temp file beside `path` for the block to write; then synced and renamed onto `path`.

  On an error the temp file is removed. Its name ends as `path` does (np.save, savefig read it).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                              suffix=f'.tmp{path.suffix}')
  tmp = pathlib.Path(name)
  try:
    try:
      os.fchmod(fd, FILE_MODE)
    finally:
      os.close(fd)
    yield tmp
    _fsync(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with writing(path) as tmp:
    tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with writing(path) as tmp:
    tmp.write_text(text)


@contextlib.contextmanager
def building_folder(root: str | os.PathLike) -> Iterator[pathlib.Path]:
  """A temp folder beside `root` for the block to fill; then renamed to `root`.

  The rename replaces an empty folder and raises OSError over a non-empty one (another writer
  won); the temp folder is removed whatever happens.
  """
  root = pathlib.Path(root)
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=root.parent, prefix=f'.{root.name}.tmp-'))
  try:
    os.chmod(tmp, FOLDER_MODE)
    yield tmp
    os.rename(tmp, root)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
