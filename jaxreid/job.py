"""The main job: StarGAN -> fakes -> re-ID steps (Algorithm 1, in framework.py) -> final results.

Each stage marks completion in the work dir; a second run skips finished stages and resumes the
unfinished one from its last checkpoint. The re-ID stage alternates (train -> evaluate -> merge ->
zero table -> fresh optimiser) and keeps the model that validates best.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxreid import parallel, records, stages
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
  # One process builds the array_record files (a shared file system is assumed); then all read.
  if parallel.is_primary():
    data.prepare(config.data, tfds_dir, synthetic_config=config.synthetic)
    if config.validation.name and (config.validation.name.startswith('synthetic') or
                                   config.validation.root):
      data.prepare(config.validation, tfds_dir, synthetic_config=config.synthetic)
  parallel.barrier('data_built')
  splits = data.load_splits(config.data, tfds_dir, synthetic_config=config.synthetic)
  sets = DataSets(splits['train'], splits['query'], splits['gallery'])
  if config.validation.name:
    if not config.validation.name.startswith('synthetic') and not config.validation.root:
      logging.warning('config.validation.name=%r but config.validation.root is empty: running '
                      'without a validation set (the last step is kept).', config.validation.name)
    else:
      val = data.load_splits(config.validation, tfds_dir, synthetic_config=config.synthetic)
      sets.val_query, sets.val_gallery = val['query'], val['gallery']
  data.check_cameras(sets.train.camids, config.camstyle.enabled)
  return sets


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) every stage of the method in `workdir`; returns the final results."""
  paths = RunPaths(pathlib.Path(workdir))
  if parallel.is_primary():
    paths.root.mkdir(parents=True, exist_ok=True)
  parallel.barrier('workdir')
  stages.check_or_save_config(paths.root, config, allow_change=allow_config_change,
                              write=parallel.is_primary())
  tracker = stages.StageTracker(paths.root)
  if tracker.done('final'):
    results = records.read_json(paths.results)
    _log_results(results, 'finished run')
    return results

  mesh = parallel.make_mesh()
  sets = load_data(config, paths)
  store = None
  # The density head uses fakes only with density.use_fakes: without, no StarGAN is trained.
  if config.camstyle.enabled and (config.cluster.method != 'density' or config.density.use_fakes):
    from jaxreid.camstyle import generate as camstyle_generate
    from jaxreid.camstyle import oracle
    from jaxreid.camstyle import train as camstyle_train
    from jaxreid.camstyle.store import FakeStore
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
  results = records.read_json(paths.reid / 'results.json')
  if parallel.is_primary():
    records.write_json_atomic(paths.results, results)
  tracker.mark('final')
  _log_results(results, 'results')
  return results


def _log_results(results: dict, what: str) -> None:
  keys = ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP')
  line = ' '.join(f'{k} {100 * results[k]:.1f}' for k in keys if k in results)
  logging.info('%s: %s', what, line)
  print(f'{what}: {line}', flush=True)
