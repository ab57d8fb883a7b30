"""Algorithm 1 (paper III-C.3): train -> evaluate -> merge -> zero table -> fresh optimiser, again.

Step 0 trains with every image its own cluster. Each later step extracts the features of every
real image and its camera-style fakes, merges m = int(N * mp) cluster pairs (single linkage over
real-real and real-fake pairs plus the diversity term), resets the lookup table to zeros at the
new size with a fresh optimiser, trains, and evaluates. The model that validates best is kept.

Everything the loop needs to go on is checkpointed after every epoch and every merge, and every
random draw is a function of (seed, step, epoch), so a killed run resumes to the same result.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from jaxreid import cluster_metrics, parallel
from jaxreid.support_sets import SupportSets
from jaxreid.clustering import merge_step
from jaxreid.evaluation import METRIC_KEYS
from jaxreid.loops import common
from jaxreid.reid import extract, sampling
from jaxreid.reid import train as reid_train


def num_steps(config, num_images: int) -> int:
  """Training steps of Algorithm 1: int(1/mp) - 1 (or cluster.max_steps), 1 without clustering."""
  if not config.cluster.enabled:
    return 1
  if config.cluster.max_steps >= 0:
    return max(1, int(config.cluster.max_steps))
  # The epsilon keeps 1 / 0.05 = 19.999... from flooring to 19.
  return max(1, int(1.0 / config.cluster.merge_percent + 1e-9) - 1)


def epoch_seed(merge_step_index: int, epoch: int) -> int:
  """The data-order key of (step, epoch): one stream per epoch, whatever the resume point."""
  return merge_step_index * 10_000 + epoch


def initial_labels(config, train) -> np.ndarray:
  """Step 0's labels: every image its own cluster.

  `config.train.true_identities=True` trains on the true identities instead: a supervised upper
  bound for the same network, schedule and support sets, not the unsupervised method.
  """
  if config.train.get('true_identities', False):
    return np.unique(np.asarray(train.pids), return_inverse=True)[1].astype(np.int32)
  return np.arange(len(train), dtype=np.int32)


class _Run:
  """The loop's mutable bookkeeping: what is checkpointed besides the train state."""

  def __init__(self, meta: dict | None, num_images: int):
    meta = meta or {}
    self.merge_step = meta.get('merge_step', 0)
    self.epoch = meta.get('epoch', 0)
    self.phase = meta.get('phase', 'train')   # train -> evaluate -> merge -> (next step) train
    self.num_classes = meta.get('num_classes', num_images)
    self.best = meta.get('best')
    self.steps = meta.get('steps', [])
    self.index = meta.get('index', 0)         # checkpoint counter

  def meta(self) -> dict:
    return {'merge_step': self.merge_step, 'epoch': self.epoch, 'phase': self.phase,
            'num_classes': self.num_classes, 'best': self.best, 'steps': self.steps,
            'index': self.index}


def train_reid(config, sets, store, mesh, paths) -> dict:
  """Runs (or resumes) Algorithm 1; writes <workdir>/reid/results.json and the kept model."""
  train = sets.train
  n = len(train)
  support = SupportSets(train.image, store, camids=train.camids)
  use_fakes = store is not None and config.cluster.use_fakes
  steps_total = num_steps(config, n)
  m = int(n * config.cluster.merge_percent)
  reid_dir = paths.reid
  ckpt, writer = common.open_records(config, reid_dir)
  train_step = reid_train.make_train_step(config, mesh)
  rng = jax.random.key(config.seed)

  labels = initial_labels(config, train)
  run = _Run(ckpt.restore_meta(), int(labels.max()) + 1)
  state = reid_train.create_train_state(config, run.num_classes, rng, mesh)
  if ckpt.latest_index() is not None:
    restored = ckpt.restore({'state': state, 'labels': labels})
    state, labels = restored['state'], np.asarray(restored['labels'], np.int32)
    logging.info('resumed at step %d, epoch %d (%s), %d clusters', run.merge_step, run.epoch,
                 run.phase, run.num_classes)

  def save():
    run.index += 1
    ckpt.save(run.index, {'state': state, 'labels': labels}, run.meta())

  steps_per_epoch = sampling.steps_per_epoch(n, config)
  while True:
    s = run.merge_step
    if run.phase == 'train':
      epochs = reid_train.epochs_for(config.train, s)
      while run.epoch < epochs:
        e = run.epoch
        lr = reid_train.learning_rate(config.train, s, e)
        batches = sampling.support_batches(
            support.support_image, support.size, labels, config=config, mesh=mesh,
            epoch=epoch_seed(s, e), slot_camera=support.slot_camera)
        t0 = time.time()
        state, metrics = reid_train.train_epoch(
            train_step, state, batches, lr=lr, num_steps=steps_per_epoch,
            desc=f'step {s} epoch {e + 1}/{epochs}', log_every=config.train.log_every,
            log_fn=lambda k, mt: writer.write(k, mt, prefix='train/'))
        logging.info('step %d epoch %d/%d: loss %.4f accuracy %.3f lr %g (%.0f s)', s, e + 1,
                     epochs, metrics.get('loss', float('nan')),
                     metrics.get('accuracy', float('nan')), lr, time.time() - t0)
        writer.write(int(jax.device_get(state.step)), metrics, prefix='epoch/')
        run.epoch += 1
        save()
      run.phase = 'evaluate'

    if run.phase == 'evaluate':
      record = _evaluate_step(config, sets, state, labels, mesh, reid_dir, run, writer)
      run.steps.append(record)
      run.best = common.keep_if_better(paths, state.variables, config, record, run.best)
      run.phase = 'merge'
      save()

    # Merge for the next step, unless this was the last one.
    clusters = int(labels.max()) + 1
    if s + 1 >= steps_total or clusters - m < m or m < 1:
      break
    t0 = time.time()
    feats = extract.extract_support_features(
        state.variables, config, support.support_image, n, support.size if use_fakes else 1,
        mesh=mesh, desc=f'step {s} support features',
        on_device=parallel.keep_on_device(config.cluster.features_on_device))
    reals, fake_feats = feats[:, 0], (feats[:, 1:] if use_fakes else None)
    del feats   # on the device, its slices are copies: S is not kept twice through the merge
    labels = merge_step(reals, fake_feats, labels, m, config.cluster.size_penalty,
                        config.cluster.constraint, topk=config.cluster.topk,
                        block_size=config.cluster.block_size,
                        matmul_dtype=config.cluster.matmul_dtype, mesh=mesh).astype(np.int32)
    run.num_classes = int(labels.max()) + 1
    if parallel.is_primary():
      common.save_labels(reid_dir / 'labels' / f'step_{s + 1:02d}.npy', labels)
    logging.info('step %d: merged %d pairs -> %d clusters (%.1f s)', s, m, run.num_classes,
                 time.time() - t0)
    state = reid_train.reset_for_new_labels(state, run.num_classes, config,
                                            reid_train.learning_rate(config.train, s + 1, 0))
    run.merge_step, run.epoch, run.phase = s + 1, 0, 'train'
    save()

  common.finish(paths, state.variables, config, common.results_of(run.steps, run.best), ckpt,
                writer)
  return {'steps': len(run.steps), 'clusters': run.num_classes}


def _evaluate_step(config, sets, state, labels, mesh, reid_dir, run, writer) -> dict:
  """The per-step record: test metrics, validation metrics, and cluster quality (reporting)."""
  s = run.merge_step
  t0 = time.time()
  test, val, feats = common.evaluate_sets(state.variables, config, sets, mesh, f'step {s}')
  record = {'step': s, 'clusters': int(labels.max()) + 1, **test}
  if val is not None:
    record['val'] = val
  # Training identities are read here for reporting only; the method never sees them.
  record['cluster_quality'] = cluster_metrics.cluster_quality(labels, sets.train.pids)
  if parallel.is_primary():
    common.save_features(reid_dir / 'features' / ('first.npz' if s == 0 else 'last.npz'), feats,
                         sets.query, sets.gallery)
  common.write_evaluation(writer, s, record)
  logging.info('step %d (%d clusters): %s%s (%.0f s)', s, record['clusters'],
               ' '.join(f'{k} {100 * test[k]:.1f}' for k in METRIC_KEYS),
               f"; validation rank1 {100 * record['val']['rank1']:.1f} mAP "
               f"{100 * record['val']['mAP']:.1f}" if 'val' in record else '', time.time() - t0)
  common.print_evaluation(f'step {s}', record)
  return record

