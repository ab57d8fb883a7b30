"""Atomic writes: whole files with the usual mode, nothing left behind on an error."""

import os

import numpy as np
import pytest

from jaxreid import atomic


def _mode(path):
  return os.stat(path).st_mode & 0o777


def test_written_file_has_the_mode_of_a_plain_one_and_no_temp_remains(tmp_path):
  plain = tmp_path / 'plain'
  plain.write_bytes(b'')
  atomic.write_bytes(tmp_path / 'sub' / 'a.bin', b'abc')
  assert (tmp_path / 'sub' / 'a.bin').read_bytes() == b'abc'
  assert _mode(tmp_path / 'sub' / 'a.bin') == _mode(plain)
  assert [p.name for p in (tmp_path / 'sub').iterdir()] == ['a.bin']


def test_temp_name_keeps_the_suffix_writers_read(tmp_path):
  with atomic.writing(tmp_path / 'x.npy') as tmp:
    np.save(tmp, np.arange(3))   # np.save would append .npy to another suffix
  np.testing.assert_array_equal(np.load(tmp_path / 'x.npy'), np.arange(3))
  assert [p.name for p in tmp_path.iterdir()] == ['x.npy']


def test_error_keeps_the_old_file_and_removes_the_temp(tmp_path):
  atomic.write_text(tmp_path / 'r.json', 'old')
  with pytest.raises(RuntimeError):
    with atomic.writing(tmp_path / 'r.json') as tmp:
      tmp.write_text('half')
      raise RuntimeError('killed')
  assert (tmp_path / 'r.json').read_text() == 'old'
  assert [p.name for p in tmp_path.iterdir()] == ['r.json']


def test_folder_appears_whole_or_not_at_all(tmp_path):
  with atomic.building_folder(tmp_path / 'd') as tmp:
    (tmp / 'f').write_text('x')
  assert (tmp_path / 'd' / 'f').read_text() == 'x'
  plain = tmp_path / 'plain'
  plain.mkdir()
  assert _mode(tmp_path / 'd') == _mode(plain)
  with pytest.raises(RuntimeError):
    with atomic.building_folder(tmp_path / 'e') as tmp:
      (tmp / 'f').write_text('x')
      raise RuntimeError('killed')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['d', 'plain']
  with pytest.raises(OSError):   # a non-empty folder is not replaced
    with atomic.building_folder(tmp_path / 'd') as tmp:
      (tmp / 'g').write_text('y')
  assert [p.name for p in (tmp_path / 'd').iterdir()] == ['f']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['d', 'plain']
