"""The folder layouts re-ID users already have on disk, parsed into (path, pid, camera) records.

Market-1501 / DukeMTMC-reID (and any folder in their layout): `bounding_box_train/`, `query/`,
`bounding_box_test/` with names `PPPP_cCsS_FFFFFF_BB.jpg`. MSMT17 V1 / V2: `train/` + `test/`
(V2: `mask_train_v2/` + `mask_test_v2/`) and list files with `<relative path> <pid>` lines.
Cameras are 0-based everywhere. Junk (pid -1) is dropped; distractors (pid 0) are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import warnings

import numpy as np

SPLITS = ('train', 'query', 'gallery')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
MARKET_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
MSMT17_LISTS = {'train': ('list_train.txt', 'list_val.txt'), 'query': ('list_query.txt',),
                'gallery': ('list_gallery.txt',)}
MSMT17_VERSIONS = {'V1': ('train', 'test'), 'V2': ('mask_train_v2', 'mask_test_v2')}

_MARKET_NAME = re.compile(r'^([-\d]+)_c(\d+)')
# How many offending names a message quotes before it only counts.
_QUOTED = 3


class DataError(ValueError):
  """A data set on disk cannot be used as given; the message is one line naming what and why."""


class DataWarning(UserWarning):
  """Something in a data set was skipped (unparseable names, unreadable images); one per cause."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a split: its file, identity (-1 never occurs: junk is dropped), 0-based camera."""
  path: pathlib.Path
  pid: int
  camid: int

  @property
  def file_name(self) -> str:
    return self.path.name


def _quote(names: list[str]) -> str:
  shown = ', '.join(names[:_QUOTED])
  return shown + (f' and {len(names) - _QUOTED} more' if len(names) > _QUOTED else '')


def _report_skipped(where: str, skipped: list[str], expected: str, strict: bool) -> None:
  """One warning (or, under `strict`, one error) for all entries of `where` that did not parse."""
  if not skipped:
    return
  message = f'{where}: {len(skipped)} file name(s) do not parse as {expected}: {_quote(skipped)}'
  if strict:
    raise DataError(message + ' (strict file names are on)')
  warnings.warn(message + ' (skipped)', DataWarning, stacklevel=3)


def parse_market_name(name: str) -> tuple[int, int] | None:
  """(pid, 0-based camera) of a Market-style file name, or None when it does not parse."""
  match = _MARKET_NAME.match(name)
  if match is None:
    return None
  try:
    pid, camera = int(match.group(1)), int(match.group(2))
  except ValueError:  # e.g. '1-2_c1...': digits and dashes that are no integer
    return None
  if camera < 1 or pid < -1:
    return None
  return pid, camera - 1


def _has_all(folder: pathlib.Path, names) -> bool:
  return all((folder / n).exists() for n in names)


def _find_layout_root(root, names, layout: str, hint: str) -> pathlib.Path:
  """`root` itself when it holds `names`, else its only child that does (users pass either)."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f'{root}: no such folder (expected the {layout} folder, {hint})')
  if _has_all(root, names):
    return root
  candidates = sorted(c for c in root.iterdir() if c.is_dir() and _has_all(c, names))
  if len(candidates) == 1:
    return candidates[0]
  if len(candidates) > 1:
    names = _quote([c.name for c in candidates])
    raise DataError(f'{root}: several {layout} folders inside ({names}); pass one of them')
  found = sorted(c.name for c in root.iterdir())
  raise DataError(f'{root}: not a {layout} layout (expected {hint}); found: '
                  f'{_quote(found) if found else "nothing"}')


def find_market_root(root, layout: str = 'Market-1501') -> pathlib.Path:
  """The folder holding bounding_box_train/query/bounding_box_test: `root` or its only child."""
  hint = 'bounding_box_train/, query/ and bounding_box_test/ in it or in its only sub-folder'
  return _find_layout_root(root, MARKET_FOLDERS.values(), layout, hint)


def _market_split(folder: pathlib.Path, strict: bool) -> list[Record]:
  records, skipped = [], []
  for entry in sorted(folder.iterdir()):
    if not entry.is_file() or entry.name.startswith('.'):
      continue
    if entry.suffix.lower() not in IMAGE_SUFFIXES:
      continue  # Market-1501 ships Thumbs.db and the like: not images, not worth a warning.
    parsed = parse_market_name(entry.name)
    if parsed is None:
      skipped.append(entry.name)
      continue
    pid, camid = parsed
    if pid == -1:
      continue  # junk boxes: not a person, never evaluated
    records.append(Record(entry, pid, camid))
  _report_skipped(str(folder), skipped, 'PID_cC... (e.g. 0002_c1s1_000451_03.jpg)', strict)
  return records


def _check_not_empty(split_records: dict[str, list[Record]], where: dict[str, str]) -> None:
  for split, records in split_records.items():
    if not records:
      raise DataError(f'{where[split]}: the {split} split has no usable images')


def market_layout_records(root, strict: bool = False,
                          layout: str = 'Market-1501') -> dict[str, list[Record]]:
  """{'train', 'query', 'gallery'} -> records of a Market-layout folder (or of its parent).

  File names that do not parse are skipped with one warning per folder (`strict`: an error).
  Junk (pid -1) is dropped, distractors (pid 0) are kept. Training pids are for reporting only.
  """
  base = find_market_root(root, layout)
  out = {split: _market_split(base / folder, strict) for split, folder in MARKET_FOLDERS.items()}
  _check_not_empty(out, {s: str(base / f) for s, f in MARKET_FOLDERS.items()})
  return out


def find_msmt17_root(root) -> tuple[pathlib.Path, str]:
  """(folder, 'V1' | 'V2') of an MSMT17 layout: `root` itself or its only child."""
  lists = [n for names in MSMT17_LISTS.values() for n in names]
  hint = ('train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2) and '
          f'{", ".join(lists)} in it or in its only sub-folder')
  root = pathlib.Path(root).expanduser()
  errors = []
  for version, folders in MSMT17_VERSIONS.items():
    try:
      return _find_layout_root(root, (*folders, *lists), 'MSMT17', hint), version
    except DataError as e:
      errors.append(e)
  raise errors[0]


def msmt17_camera(name: str) -> int | None:
  """0-based camera of an MSMT17 file name (its third '_' field, 1-based), or None."""
  parts = pathlib.PurePosixPath(name).name.split('_')
  if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
    return None
  return int(parts[2]) - 1


def _msmt17_list(list_file: pathlib.Path, image_dir: pathlib.Path,
                 strict: bool) -> list[Record]:
  records, bad, missing = [], [], []
  for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split()
    camid = msmt17_camera(fields[0]) if len(fields) == 2 else None
    if camid is None or not fields[1].lstrip('-').isdigit():
      bad.append(f'line {line_no}: {line.strip()[:60]!r}')
      continue
    path = image_dir / fields[0]
    if not path.is_file():
      missing.append(fields[0])
      continue
    pid = int(fields[1])
    if pid == -1:
      continue
    records.append(Record(path, pid, camid))
  _report_skipped(str(list_file), bad, "'<relative path> <pid>' with a camera in the name "
                  '(e.g. 0000/0000_000_01_0303morning_0015_0.jpg 0)', strict)
  if missing:
    message = (f'{list_file}: {len(missing)} listed image(s) are missing under {image_dir}: '
               f'{_quote(missing)}')
    if strict:
      raise DataError(message)
    warnings.warn(message + ' (skipped)', DataWarning, stacklevel=2)
  return records


def msmt17_records(root, strict: bool = False,
                   with_val: bool = True) -> dict[str, list[Record]]:
  """{'train', 'query', 'gallery'} -> records of an MSMT17 V1/V2 folder (or of its parent).

  Train = list_train.txt + list_val.txt (32,621 images, the count papers report; `with_val=False`
  keeps list_train.txt only). Cameras come from the name: int(name.split('_')[2]) - 1.
  """
  base, version = find_msmt17_root(root)
  train_dir, test_dir = (base / f for f in MSMT17_VERSIONS[version])
  out, where = {}, {}
  for split, lists in MSMT17_LISTS.items():
    lists = lists[:1] if (split == 'train' and not with_val) else lists
    image_dir = train_dir if split == 'train' else test_dir
    out[split] = [r for name in lists for r in _msmt17_list(base / name, image_dir, strict)]
    where[split] = str(base / lists[0])
  _check_not_empty(out, where)
  return out


def fingerprint(records: dict[str, list[Record]], *extra) -> str:
  """A short hash of the file list (names, sizes, labels): a changed folder is built anew."""
  h = hashlib.sha256(repr(extra).encode())
  for split in sorted(records):
    for r in records[split]:
      h.update(f'{split}\t{r.path.name}\t{r.path.stat().st_size}\t{r.pid}\t{r.camid}\n'.encode())
  return h.hexdigest()[:16]


def check_cameras(cameras, camstyle_enabled: bool) -> None:
  """Refuses a training set whose cameras cannot support camera-style transfer (one line).

  `cameras`: the number of cameras, or the training camids (then distinct cameras are counted,
  so a folder holding only c2 counts as one camera even though its camids reach 1).
  """
  if isinstance(cameras, (int, np.integer)):
    num_cameras = int(cameras)
  else:
    num_cameras = len(np.unique(np.asarray(cameras)))
  if num_cameras < 1:
    raise DataError(f'the training set has {num_cameras} cameras; expected at least 1')
  if camstyle_enabled and num_cameras < 2:
    raise DataError('the training set has a single camera, but camera-style transfer needs at '
                    'least 2; set --config.camstyle.enabled=False or use a multi-camera data set')
