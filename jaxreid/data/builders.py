"""TFDS builders for the re-ID folder layouts, and random-access splits read without TensorFlow.

Each builder reads the folder a user already has (given as `root=`, or as tfds' `manual_dir`),
validates every image once, and writes array_record files under `data_dir`; reading goes through
`builder.as_data_source()` (random access, PIL decoding). The build directory is named after a
fingerprint of the folder (file names, sizes, labels), so a second call reuses a finished build,
a changed folder is built anew, and an interrupted build (tfds writes to an incomplete directory
and renames it at the end) is simply redone.

Example fields: image (uint8 HxWx3 RGB, native size), pid, camid (0-based), index (0..N-1 in the
split: position == index), file_name. Per-split pid/camid/file_name arrays are also kept in the
dataset's metadata so that labels are read without touching the images.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import logging
import os
import pathlib
import re
import shutil
import threading
import warnings
from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jaxreid.data import images
from jaxreid.data import layouts
from jaxreid.data.layouts import DataError, DataWarning, Record

_MARKET_INSTRUCTIONS = """\
Download {name} by hand (it is not redistributable) and point `root=` (or tfds' manual_dir, or
--config.data.root) at the folder that holds `bounding_box_train/`, `query/` and
`bounding_box_test/` (or at its parent). File names follow `PPPP_cCsS_FFFFFF_BB.jpg`.
"""

_BUILD_CHUNK = 256  # images validated per batch of thread-pool work (bounds memory while building)


@contextlib.contextmanager
def _quiet_absl():
  """Hides tfds' INFO/WARNING chatter ('Using custom data configuration ...') for one call."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:40] or 'data'


_current = threading.local()  # the file a validation worker is decoding, for its warnings


def _try_encode(record: Record) -> tuple[bytes, tuple[int, int]] | str:
  """(stored bytes, (width, height)) of a record's image, or the one-line reason it is unusable."""
  _current.name = record.file_name
  try:
    return images.encode_for_store_with_size(record.path)
  except images.CorruptImageError as e:
    return str(e)
  finally:
    _current.name = None


@contextlib.contextmanager
def _image_warnings_collected(collected: list[str]):
  """Warnings PIL raises while a worker decodes an image go to `collected`, named by the file.

  PIL names the in-memory buffer it read (and the warning points at the thread pool), so the
  user could not tell which file it is about.
  """
  with warnings.catch_warnings():
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
      name = getattr(_current, 'name', None)
      if name is None:
        show(message, category, filename, lineno, file, line)
        return
      text = re.sub(r'<_io\.BytesIO object at 0x[0-9a-f]+>', name, str(message))
      collected.append(text if name in text else f'{name}: {text}')

    warnings.showwarning = showwarning
    yield


class _ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder logic; subclasses say how to read their layout (`_layout_records`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: array_record, RGB images, 0-based cameras.'}
  LAYOUT = 'Market-1501'
  CITATION = ''
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MARKET_INSTRUCTIONS.format(name='the data set')

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' own lookup goes through importlib_resources (not a dependency here) for packages.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, root=None, strict: bool = False, threads: int = 4, data_dir=None,
               file_format: str = 'array_record', **kwargs):
    """root: the user's folder (None: tfds' manual_dir, read at build time). strict: a file name
    that does not parse is an error instead of a warning. threads: image validation workers."""
    self._strict = strict
    self._threads = max(1, threads)
    self._root = None if root is None else pathlib.Path(root).expanduser().resolve()
    self._split_records = None
    config = kwargs.pop('config', None)
    if self._root is not None:
      self._split_records = self._layout_records(self._root)
      name = f'{_slug(self._root.name)}_{layouts.fingerprint(self._split_records, self.name)}'
      config = tfds.core.BuilderConfig(name=name, description=f'built from {self._root}')
    with _quiet_absl():
      super().__init__(data_dir=data_dir, config=config, file_format=file_format, **kwargs)

  def _layout_records(self, root: pathlib.Path) -> dict[str, list[Record]]:
    return layouts.market_layout_records(root, strict=self._strict, layout=self.LAYOUT)

  # tfds announces "Downloading and preparing dataset": this builder reads a local folder only.
  def _log_download_bytes(self) -> None:
    print(f'Building the {self.LAYOUT}-layout data set from {self._root or "the manual folder"} '
          f'into {self.data_dir} (local files only; nothing is downloaded)', flush=True)

  def _log_download_done(self) -> None:
    print(f'Built {self.data_dir}; later runs reuse it.', flush=True)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.LAYOUT}-format person re-identification images (train/query/gallery).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'pid': np.int32,
            'camid': np.int32,
            'index': np.int32,
            'file_name': tfds.features.Text(),
        }),
        # Keeps the generation order on disk, so that position in the data source == index.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        citation=self.CITATION,
    )

  def _split_generators(self, dl_manager):
    split_records = self._split_records
    if split_records is None:
      split_records = self._layout_records(pathlib.Path(dl_manager.manual_dir))
    return {split: self._generate_examples(split, records)
            for split, records in split_records.items()}

  def _generate_examples(self, split: str, records: list[Record]) -> Iterator[tuple[int, dict]]:
    pids, camids, names, skipped, noted, large = [], [], [], [], [], []
    index = 0
    # tfds shows the progress bar ('Generating train examples').
    with concurrent.futures.ThreadPoolExecutor(self._threads) as pool, \
        _image_warnings_collected(noted):
      for start in range(0, len(records), _BUILD_CHUNK):
        chunk = records[start:start + _BUILD_CHUNK]
        for record, data in zip(chunk, pool.map(_try_encode, chunk)):
          if isinstance(data, str):
            skipped.append(data)
            continue
          data, (width, height) = data
          if max(width, height) > images.LARGE_SIDE:
            large.append(f'{record.file_name} ({width}x{height})')
          yield index, {'image': data, 'pid': record.pid, 'camid': record.camid, 'index': index,
                        'file_name': record.file_name}
          pids.append(record.pid)
          camids.append(record.camid)
          names.append(record.file_name)
          index += 1
    folder = self._root or (records[0].path.parent if records else split)
    if skipped:
      warnings.warn(f'{folder} ({split}): skipped {len(skipped)} unreadable image(s): '
                    f'{"; ".join(skipped[:3])}{" ..." if len(skipped) > 3 else ""}',
                    DataWarning, stacklevel=2)
    if noted:
      unique = list(dict.fromkeys(noted))
      warnings.warn(f'{folder} ({split}): {len(unique)} image warning(s): '
                    f'{"; ".join(unique[:3])}{" ..." if len(unique) > 3 else ""}',
                    DataWarning, stacklevel=2)
    if large:
      warnings.warn(f'{folder} ({split}): {len(large)} image(s) larger than '
                    f'{images.LARGE_SIDE} pixels a side, stored at full size (the model reads '
                    f'them resized; downscaling the folder saves disk and decoding time): '
                    f'{"; ".join(large[:3])}{" ..." if len(large) > 3 else ""}',
                    DataWarning, stacklevel=2)
    if not index:
      raise DataError(f'{folder}: the {split} split has no readable images')
    self.info.metadata[split] = {'pid': pids, 'camid': camids, 'file_name': names,
                                 'skipped': skipped}


class ReidFolder(_ReidBuilder, skip_registration=True):
  """Any folder in the Market-1501 layout (also what the synthetic generator writes)."""

  LAYOUT = 'Market-1501'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MARKET_INSTRUCTIONS.format(name='your data set')


class Market1501(_ReidBuilder, skip_registration=True):
  """Market-1501 (Zheng et al. 2015): 6 cameras, 12,936 / 3,368 / 15,913 images."""

  LAYOUT = 'Market-1501'
  CITATION = ('Zheng, Shen, Tian, Wang, Wang, Tian. Scalable Person Re-identification: '
              'A Benchmark. ICCV 2015.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MARKET_INSTRUCTIONS.format(
      name='Market-1501 (folder Market-1501-v15.09.15)')


class DukemtmcReid(_ReidBuilder, skip_registration=True):
  """DukeMTMC-reID (withdrawn by its owners; the format is supported for users who have it)."""

  LAYOUT = 'DukeMTMC-reID'
  CITATION = ('Zheng, Zheng, Yang. Unlabeled Samples Generated by GAN Improve the Person '
              'Re-identification Baseline in vitro. ICCV 2017.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MARKET_INSTRUCTIONS.format(name='DukeMTMC-reID')


class Msmt17(_ReidBuilder, skip_registration=True):
  """MSMT17 V1 or V2: 15 cameras; train = list_train + list_val (32,621 images)."""

  LAYOUT = 'MSMT17'
  CITATION = ('Wei, Zhang, Gao, Tian. Person Transfer GAN to Bridge Domain Gap for Person '
              'Re-Identification. CVPR 2018.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download MSMT17 by hand (from its authors, on request) and point `root=` (or tfds' manual_dir, or
--config.data.root) at MSMT17_V1 (train/, test/) or MSMT17_V2 (mask_train_v2/, mask_test_v2/),
holding list_train.txt, list_val.txt, list_query.txt and list_gallery.txt (or at its parent).
"""

  def __init__(self, *, with_val: bool = True, **kwargs):
    """with_val: add list_val.txt to the training images (the usual 32,621-image train set)."""
    self._with_val = with_val
    super().__init__(**kwargs)

  def _layout_records(self, root: pathlib.Path) -> dict[str, list[Record]]:
    return layouts.msmt17_records(root, strict=self._strict, with_val=self._with_val)


BUILDERS = {'market1501': Market1501, 'dukemtmc_reid': DukemtmcReid, 'msmt17': Msmt17,
            'folder': ReidFolder}
SYNTHETIC = ('synthetic', 'synthetic_val')


class ReidSplit:
  """One split of a built data set: random-access images plus its label arrays.

  pids of the training split are for reporting (cluster quality) only: the method is
  unsupervised, and no training code may read them.
  """

  def __init__(self, builder: _ReidBuilder, split: str, name: str):
    if split not in builder.info.metadata:
      raise DataError(f'{builder.data_dir}: no {split!r} split (expected one of {layouts.SPLITS})')
    meta = builder.info.metadata[split]
    self.name = name
    self.split = split
    self.data_dir = pathlib.Path(builder.data_dir)
    self.pids = np.asarray(meta['pid'], np.int32)
    self.camids = np.asarray(meta['camid'], np.int32)
    self.file_names = [str(n) for n in meta['file_name']]
    self.skipped = list(meta['skipped'])
    # Raw records, parsed here: tfds' generic example decoding costs more than the JPEG decode.
    self._source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    if len(self._source) != len(self.pids):
      raise DataError(f'{self.data_dir}: {split} holds {len(self._source)} images but its metadata '
                      f'{len(self.pids)}; delete the folder to rebuild it')

  def __len__(self) -> int:
    return len(self.pids)

  def __repr__(self) -> str:
    return (f'ReidSplit({self.name}:{self.split}, {len(self)} images, '
            f'{len(np.unique(self.pids))} ids, {self.num_cameras} cameras)')

  @property
  def num_cameras(self) -> int:
    """Width of a one-hot camera code: the largest 0-based camid + 1."""
    return int(self.camids.max()) + 1

  def image_bytes(self, i: int) -> bytes:
    """The stored (JPEG or PNG, RGB) bytes of image i."""
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f'image index {i} out of range for {self.name}:{self.split} '
                       f'({len(self)} images)')
    example = tf_example_pb2.Example.FromString(self._source[i])
    return example.features.feature['image'].bytes_list.value[0]

  def image(self, i: int) -> np.ndarray:
    """Image i as uint8 HxWx3 RGB at its stored size (safe to call from several threads)."""
    return images.decode_rgb(self.image_bytes(i))

  def pil_image(self, i: int):
    """Image i as an RGB PIL image: a faster `get_image` for the input pipeline (no array copy)."""
    return images.decode_pil(self.image_bytes(i))


def make_builder(name: str, root, tfds_dir, *, strict: bool = False, threads: int = 4,
                 **kwargs) -> _ReidBuilder:
  """The builder for data set `name` ('market1501', 'dukemtmc_reid', 'msmt17', 'folder');
  kwargs go to its constructor (e.g. with_val for MSMT17)."""
  if name not in BUILDERS:
    raise DataError(f'data set name {name!r}: expected one of {sorted(BUILDERS) + list(SYNTHETIC)}')
  if not root:
    raise DataError(f'no folder given for {name!r}: expected --config.data.root (or '
                    'validation.root) to point at the data set you downloaded')
  return BUILDERS[name](root=root, data_dir=tfds_dir, strict=strict, threads=threads, **kwargs)


def _synthetic_root(name: str, tfds_dir: pathlib.Path, synthetic_config) -> pathlib.Path:
  """Writes (or reuses) the synthetic Market-layout folder next to the tfds directory."""
  if synthetic_config is None:
    raise DataError(f'data set {name!r} needs synthetic_config=config.synthetic (its sizes)')
  from jaxreid.data import synthetic  # pylint: disable=import-outside-toplevel
  params = synthetic.params_of(synthetic_config, 1000 if name == 'synthetic_val' else 0)
  return pathlib.Path(synthetic.write_market_folder(tfds_dir.parent / 'synthetic' / name, **params))


def prepare(data_config, tfds_dir, *, synthetic_config=None) -> _ReidBuilder:
  """Builds (or reuses) the array_record files of config.data or config.validation."""
  if not tfds_dir:
    raise DataError('tfds_dir is empty: expected the folder for array_record files '
                    '(config.data.tfds_dir, or <workdir>/tfds)')
  tfds_dir = pathlib.Path(tfds_dir).expanduser()
  name = data_config.name
  strict = bool(data_config.get('strict_filenames', False))
  threads = min(8, os.cpu_count() or 1)  # validation decodes release the GIL
  if name in SYNTHETIC:
    root = _synthetic_root(name, tfds_dir, synthetic_config)
    builder = make_builder('folder', root, tfds_dir, strict=True, threads=threads)
  else:
    extra = {'with_val': bool(data_config.get('msmt17_with_val', True))} if name == 'msmt17' else {}
    builder = make_builder(name, data_config.get('root', ''), tfds_dir, strict=strict,
                           threads=threads, **extra)
  _remove_incomplete_builds(builder)
  try:
    with _quiet_absl():
      builder.download_and_prepare()
  except PermissionError as e:
    raise DataError(f'{e.filename or tfds_dir}: not writable (expected a folder where the '
                    'array_record files can be written; set config.data.tfds_dir)') from e
  return builder


def _remove_incomplete_builds(builder: _ReidBuilder) -> None:
  """Deletes the incomplete.* folders of builds killed midway (tfds only removes them on errors).

  One process builds a data set at a time (the primary), so such a folder belongs to no one.
  """
  data_dir = pathlib.Path(os.fspath(builder.data_dir))
  if data_dir.exists():
    return  # built: nothing is building into this folder
  for stale in data_dir.parent.glob(f'incomplete.*_{data_dir.name}'):
    if stale.is_dir():
      logging.getLogger(__name__).warning('removing %s, left by a build that was stopped', stale)
      shutil.rmtree(stale, ignore_errors=True)


def load_split(data_config, split: str, tfds_dir, *, synthetic_config=None) -> ReidSplit:
  """Split 'train', 'query' or 'gallery' of the data set `data_config` names, built if needed.

  data_config: config.data or config.validation (fields name, root[, strict_filenames]).
  'synthetic' / 'synthetic_val' (seed + 1000) are generated from `synthetic_config`
  (config.synthetic) into <tfds_dir>/../synthetic/<name> and read like any folder.
  """
  if split not in layouts.SPLITS:
    raise DataError(f'split {split!r}: expected one of {layouts.SPLITS}')
  return ReidSplit(prepare(data_config, tfds_dir, synthetic_config=synthetic_config), split,
                   data_config.name)


def load_splits(data_config, tfds_dir, *, synthetic_config=None) -> dict[str, ReidSplit]:
  """{'train', 'query', 'gallery'} -> ReidSplit, building once (cheaper than three load_split)."""
  return splits_of(prepare(data_config, tfds_dir, synthetic_config=synthetic_config),
                   data_config.name)


def splits_of(builder: _ReidBuilder, name: str) -> dict[str, ReidSplit]:
  """{'train', 'query', 'gallery'} -> ReidSplit of a builder `prepare` returned."""
  return {split: ReidSplit(builder, split, name) for split in layouts.SPLITS}
