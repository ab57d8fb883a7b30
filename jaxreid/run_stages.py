"""The stages of a run: StarGAN -> fakes -> re-ID loop (jaxreid/loops) -> final results.

Each stage marks completion in DIR/stages.json; a second run skips finished stages and resumes the
unfinished one from its last checkpoint. DIR/config.json ties the work dir to its config. The re-ID
stage is the paper's Algorithm 1 (or the density loop) and keeps the model that validates best.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import ml_collections
from absl import logging
from flax import traverse_util

from jaxreid import evaluation, interrupts, parallel, records


class RunError(RuntimeError):
  """A work dir cannot be used as asked; the message is one line saying why and what to do."""


class StageTracker:
  """Completion marks in DIR/stages.json: a finished stage is skipped when the run resumes."""

  def __init__(self, workdir: str | pathlib.Path):
    self._path = pathlib.Path(workdir) / 'stages.json'

  def _load(self) -> dict:
    try:
      return records.read_json(self._path, default={})
    except records.RecordError as e:
      # The marks only save time: every stage resumes from its own checkpoints or fakes chunks,
      # so a damaged file is set aside and the stages are re-checked from the start.
      aside = self._path.with_name(self._path.name + '.damaged')
      logging.warning('%s; moved it to %s: every stage resumes from its checkpoints', e, aside)
      if parallel.is_primary():
        os.replace(self._path, aside)
      return {}

  def done(self, name: str) -> bool:
    return name in self._load()

  def summary(self, name: str) -> dict | None:
    return self._load().get(name)

  def mark(self, name: str, summary: dict | None = None) -> None:
    if not parallel.is_primary():
      return
    marks = self._load()
    marks[name] = summary or {}
    records.write_json_atomic(self._path, marks)

  def unmark(self, name: str) -> None:
    """Forgets that `name` finished (its output turned out damaged), so this run redoes it."""
    if not parallel.is_primary():
      return
    marks = self._load()
    if marks.pop(name, None) is not None:
      records.write_json_atomic(self._path, marks)


def _flatten(d: dict) -> dict:
  """{'a.b': v} from {'a': {'b': v}}."""
  return traverse_util.flatten_dict(d, sep='.')


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose values differ between a saved config (JSON) and `config`."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(saved)
  return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))


def check_or_save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                         allow_change: bool = False, write: bool = True,
                         finished: bool = False) -> None:
  """Saves the config with a new work dir; refuses to resume one made with another config.

  Every process checks; only the one with `write` (the primary) writes. A `finished` work dir
  keeps its config whatever `allow_change` says: its results belong to that config.
  """
  path = pathlib.Path(workdir) / 'config.json'
  saved = records.read_json(
      path, advice='if this command has the config the work dir was made with, remove the file and '
                   'run again; otherwise use a new --workdir')
  if saved is not None:
    diff = config_differences(saved, config)
    if diff and finished:
      raise RunError(f'work dir {workdir} holds a finished run made with another config '
                     f'(differing keys: {", ".join(diff[:8])}{" ..." if len(diff) > 8 else ""}); '
                     'its results and config are kept as they are: use a new --workdir for this '
                     'config')
    if diff and not allow_change:
      shown = ', '.join(f'{k} ({_flatten(saved).get(k)!r} -> '
                        f'{_flatten(json.loads(config.to_json_best_effort())).get(k)!r})'
                        for k in diff[:8])
      more = f' and {len(diff) - 8} more' if len(diff) > 8 else ''
      raise RunError(f'work dir {workdir} was made with another config; differing keys: '
                     f'{shown}{more}. Use a new --workdir, or pass --allow_config_change to resume '
                     'anyway.')
    if not diff:
      return
  if write:
    records.write_json_atomic(path, json.loads(config.to_json_best_effort()))


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where a run keeps its things, all under one work dir."""
  root: pathlib.Path

  @property
  def tfds(self) -> pathlib.Path:
    return self.root / 'tfds'

  @property
  def camstyle(self) -> pathlib.Path:
    return self.root / 'camstyle'

  @property
  def fakes(self) -> pathlib.Path:
    return self.root / 'fakes'

  @property
  def reid(self) -> pathlib.Path:
    return self.root / 'reid'

  @property
  def results(self) -> pathlib.Path:
    return self.root / 'results.json'


@dataclasses.dataclass
class DataSets:
  """The splits a run reads. `train.pids` exist for reporting only."""
  train: Any
  query: Any
  gallery: Any
  val_query: Any = None
  val_gallery: Any = None


def load_data(config, paths: RunPaths) -> DataSets:
  """Builds (once) and opens the train / test splits and the validation set, if any."""
  from jaxreid import data
  tfds_dir = pathlib.Path(config.data.tfds_dir) if config.data.tfds_dir else paths.tfds
  has_val = bool(config.validation.name) and (config.validation.name.startswith('synthetic') or
                                              bool(config.validation.root))
  # One process builds the array_record files (a shared file system is assumed); then all read.
  # Each data set is prepared once per process: preparing parses its folder (and warns) again.
  def prepare_all():
    return {'data': data.prepare(config.data, tfds_dir, synthetic_config=config.synthetic),
            'val': data.prepare(config.validation, tfds_dir, synthetic_config=config.synthetic)
                   if has_val else None}

  built = prepare_all() if parallel.is_primary() else None
  parallel.barrier('data_built')
  built = built or prepare_all()
  splits = data.splits_of(built['data'], config.data.name)
  sets = DataSets(splits['train'], splits['query'], splits['gallery'])
  if config.validation.name:
    if not has_val:
      logging.warning('config.validation.name=%r but config.validation.root is empty: running '
                      'without a validation set (the last step is kept).', config.validation.name)
    else:
      val = data.splits_of(built['val'], config.validation.name)
      sets.val_query, sets.val_gallery = val['query'], val['gallery']
  data.check_cameras(sets.train.camids, config.camstyle.enabled)
  return sets


def check_workdir(workdir: str | None) -> pathlib.Path:
  """The work dir as a path, created if need be; RunError (one line) if it cannot be used.

  Runs before anything is built, so a bad --workdir costs nothing.
  """
  if workdir is None or not str(workdir).strip():
    raise RunError('--workdir is empty: expected a folder for the run\'s data, checkpoints and '
                   'results, e.g. --workdir=runs/synthetic')
  root = pathlib.Path(workdir)
  if root.exists() and not root.is_dir():
    raise RunError(f'--workdir={workdir} is a file: expected a folder (new or of an earlier run)')
  if parallel.is_primary():
    try:
      root.mkdir(parents=True, exist_ok=True)
      probe = root / f'.write_test.{os.getpid()}'
      probe.write_bytes(b'')
      probe.unlink()
    except OSError as e:
      raise RunError(f'--workdir={workdir} cannot be used: {e.strerror or e} (expected a folder '
                     'this user can create and write)') from e
  parallel.barrier('workdir')
  return root


def _finished_results(paths: RunPaths) -> dict:
  """The results of a finished run; rebuilt from reid/results.json if results.json is damaged."""
  try:
    results = records.read_json(paths.results)
  except records.RecordError as e:
    logging.warning('%s; rebuilding it from %s', e, paths.reid / 'results.json')
    results = None
  if results is None:
    results = records.read_json(
        paths.reid / 'results.json',
        advice='the finished run\'s results cannot be rebuilt: use a new --workdir')
    if results is None:
      raise RunError(f'{paths.results} is missing and so is {paths.reid / "results.json"}: the '
                     'finished run\'s results cannot be rebuilt; use a new --workdir')
    if parallel.is_primary():
      records.write_json_atomic(paths.results, results)
  return results


def _check_fakes(tracker: StageTracker, paths: RunPaths) -> None:
  """Deletes damaged fakes chunks and drops a generation mark the store no longer deserves, so
  that this run regenerates what is missing (a killed generation only leaves whole chunks)."""
  from jaxreid.camstyle import store as fake_store
  marked = tracker.done('camstyle_generate')
  if tracker.done('reid') or not (marked or paths.fakes.exists()):
    return
  problems = fake_store.check(paths.fakes)
  if not problems:
    return
  damaged = [p for p in problems if 'missing' not in p]
  if marked or damaged:
    logging.warning('fakes store %s is incomplete or damaged (%s); regenerating what is missing',
                    paths.fakes, ', '.join(problems[:4]) + (' ...' if len(problems) > 4 else ''))
  if parallel.is_primary():
    fake_store.remove_damaged(paths.fakes)
    tracker.unmark('camstyle_generate')
  parallel.barrier('fakes_checked')


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) every stage of the method in `workdir`; returns the final results."""
  paths = RunPaths(check_workdir(workdir))
  tracker = StageTracker(paths.root)
  # results.json is written last: with it, the run is finished even if its stage marks are lost.
  finished = tracker.done('final') or paths.results.is_file()
  check_or_save_config(paths.root, config, allow_change=allow_config_change,
                              write=parallel.is_primary(), finished=finished)
  if finished:
    results = _finished_results(paths)
    _log_results(results, 'finished run')
    return results

  from jaxreid.reid import pretrained
  # A missing weights package or a checkpoint of another network is known before any data is built.
  pretrained.check_init_checkpoint(config.model, config.data.height, config.data.width)
  mesh = parallel.make_mesh()
  sets = load_data(config, paths)
  interrupts.raise_if_pending()
  store = None
  # The density head uses fakes only with density.use_fakes: without, no StarGAN is trained.
  if config.camstyle.enabled and (config.cluster.method != 'density' or config.density.use_fakes):
    from jaxreid.camstyle import generate as camstyle_generate
    from jaxreid.camstyle import oracle
    from jaxreid.camstyle import train as camstyle_train
    from jaxreid.camstyle.store import FakeStore
    _check_fakes(tracker, paths)
    # Oracle fakes (synthetic data only) are re-rendered by the generator: no StarGAN to train.
    if not config.camstyle.oracle and not tracker.done('camstyle_train'):
      t0 = time.time()
      summary = camstyle_train.train(config, sets.train, paths.camstyle, mesh)
      tracker.mark('camstyle_train', {**(summary or {}), 'seconds': time.time() - t0})
      interrupts.raise_if_pending()
    if not tracker.done('camstyle_generate'):
      t0 = time.time()
      if config.camstyle.oracle:
        summary = oracle.generate(config, sets.train, paths.fakes)
      else:
        summary = camstyle_generate.generate(config, sets.train, paths.camstyle, paths.fakes, mesh)
      tracker.mark('camstyle_generate', {**(summary or {}), 'seconds': time.time() - t0})
      interrupts.raise_if_pending()
    store = FakeStore.open(paths.fakes)

  if not tracker.done('reid'):
    if config.cluster.method == 'density':
      from jaxreid.loops import density as loop
    else:
      from jaxreid.loops import algorithm1 as loop
    t0 = time.time()
    summary = loop.train_reid(config, sets, store, mesh, paths)
    tracker.mark('reid', {**summary, 'seconds': time.time() - t0})

  parallel.barrier('reid_done')
  results = records.read_json(paths.reid / 'results.json',
                              advice='remove the reid folder and run again to retrain it')
  if parallel.is_primary():
    records.write_json_atomic(paths.results, results)
  tracker.mark('final')
  _log_results(results, 'results')
  return results


def _log_results(results: dict, what: str) -> None:
  line = ' '.join(f'{k} {100 * results[k]:.1f}' for k in evaluation.METRIC_KEYS if k in results)
  logging.info('%s: %s', what, line)
  print(f'{what}: {line}', flush=True)
