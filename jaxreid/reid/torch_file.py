"""Reads a PyTorch checkpoint (a state dict of tensors) into numpy without torch and without pickle code.

Both of torch's formats are read: the zip archive (torch >= 1.6) and the older "legacy" stream
(magic number, protocol, system info, the pickled object, then each storage's raw bytes). The
pickle is unpickled with a whitelist: only dicts, OrderedDicts, tensors and storages are rebuilt,
so nothing a file names is imported or run (the guarantee of torch.load(weights_only=True)).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class TorchFileError(ValueError):
  """The file is not a PyTorch state dict this reader accepts; the message names what is wrong."""


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage's bytes, filled in once read (the legacy format stores them after the pickle)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, numel, None


class _LazyTensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    flat = self.storage.data
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                           tuple(s * item for s in self.stride))
    return np.array(view)   # a copy: the result does not alias the file's buffer


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, storages: dict, load_storage):
    super().__init__(f)
    self._storages, self._load_storage = storages, load_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise TorchFileError(f'refuses to load {module}.{name}: only tensors and dicts of tensors '
                         'are read')

  def persistent_load(self, pid):
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != 'storage':
      raise TorchFileError(f'unsupported persistent object {kind!r}')
    storage_type, key, _location, numel = pid[1:5]
    if key not in self._storages:
      self._storages[key] = self._load_storage(key, storage_type.dtype, numel)
    return self._storages[key]


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.to_numpy()
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
  return obj


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = next((n for n in names if n.endswith('/data.pkl') or n == 'data.pkl'), None)
    if pkl is None:
      raise TorchFileError('a zip file without data.pkl')
    prefix = pkl[:-len('data.pkl')]

    def load_storage(key, dtype, numel):
      storage = _Storage(dtype, numel)
      storage.data = np.frombuffer(z.read(f'{prefix}data/{key}'), dtype.newbyteorder('<'),
                                   count=numel)
      return storage

    return _Unpickler(io.BytesIO(z.read(pkl)), {}, load_storage).load()


def _read_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    safe = lambda: _Unpickler(f, {}, None).load()   # the header holds plain values only
    if safe() != _LEGACY_MAGIC:
      raise TorchFileError('neither a zip archive nor a legacy PyTorch file (bad magic number)')
    safe()   # protocol version
    safe()   # system info (endianness, type sizes)
    storages: dict = {}
    obj = _Unpickler(f, storages, lambda key, dtype, numel: _Storage(dtype, numel)).load()
    keys = pickle.load(f)   # a list of strings
    for key in keys:
      storage = storages[key]
      (numel,) = struct.unpack('<q', f.read(8))
      raw = f.read(numel * storage.dtype.itemsize)
      if len(raw) != numel * storage.dtype.itemsize:
        raise TorchFileError('the file is truncated')
      storage.data = np.frombuffer(raw, storage.dtype.newbyteorder('<'), count=numel)
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: numpy array} of a PyTorch state dict file; TorchFileError (one line) otherwise."""
  path = os.fspath(path)
  try:
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except TorchFileError as e:
    raise TorchFileError(f'{path}: {e}') from None
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error) as e:
    raise TorchFileError(f'{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})'
                         ) from None
  if not isinstance(obj, dict):
    raise TorchFileError(f'{path}: holds a {type(obj).__name__}, expected a state dict')
  out = _materialise(obj)
  bad = [k for k, v in out.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise TorchFileError(f'{path}: entry {bad[0]!r} is not a tensor')
  return dict(out)
