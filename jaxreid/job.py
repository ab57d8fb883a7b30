"""The main job: StarGAN -> fakes -> re-ID steps (Algorithm 1, in framework.py) -> final results.

Each stage marks completion in the work dir; a second run skips finished stages and resumes the
unfinished one from its last checkpoint. The re-ID stage alternates (train -> evaluate -> merge ->
zero table -> fresh optimiser) and keeps the model that validates best.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxreid import evaluation, parallel, records, stages
from jaxreid.stages import RunError


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


def _check_fakes(tracker: stages.StageTracker, paths: RunPaths) -> None:
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
  tracker = stages.StageTracker(paths.root)
  # results.json is written last: with it, the run is finished even if its stage marks are lost.
  finished = tracker.done('final') or paths.results.is_file()
  stages.check_or_save_config(paths.root, config, allow_change=allow_config_change,
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
    if not tracker.done('camstyle_generate'):
      t0 = time.time()
      if config.camstyle.oracle:
        summary = oracle.generate(config, sets.train, paths.fakes)
      else:
        summary = camstyle_generate.generate(config, sets.train, paths.camstyle, paths.fakes, mesh)
      tracker.mark('camstyle_generate', {**(summary or {}), 'seconds': time.time() - t0})
    store = FakeStore.open(paths.fakes)

  if not tracker.done('reid'):
    from jaxreid import framework
    if config.cluster.method == 'density':
      from jaxreid import density_framework as framework
    t0 = time.time()
    summary = framework.train_reid(config, sets, store, mesh, paths)
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
