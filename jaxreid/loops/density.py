"""The density head's loop (cluster.method = 'density'): every epoch, re-cluster, train, evaluate.

Each epoch extracts the features of every real training image (and, with density.use_fakes, of
its camera-style fakes), clusters them with DBSCAN on the k-reciprocal Jaccard distance (outliers
sit the epoch out), initialises the cluster memory with the cluster means, and trains
density.iters_per_epoch P x K steps with the contrastive loss. The optimiser state carries over
from epoch to epoch; the memory does not. Every density.eval_every epochs (and after the last) the
model is evaluated; the one that validates best is kept, as for the paper's method.

A checkpoint is written after each clustering, each epoch of training and each evaluation, and
every random draw is a function of (seed, epoch), so a killed run resumes to the same result.
The records (results.json: per-epoch clusters, outliers and pairwise precision / recall; the
evaluated epochs as `steps`) have the paper's method's layout, so figures and tables read both.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from jaxreid import cluster_metrics, configlib, parallel
from jaxreid.support_sets import SupportSets
from jaxreid.clustering import density as dbscan
from jaxreid.data import pipeline
from jaxreid.loops import common
from jaxreid.reid import cluster_memory, extract
from jaxreid.reid import train as reid_train


class _Run:
  """The loop's bookkeeping besides the train state: checkpointed as JSON."""

  def __init__(self, meta: dict | None):
    meta = meta or {}
    self.epoch = meta.get('epoch', 0)
    self.phase = meta.get('phase', 'cluster')   # cluster -> train -> (evaluate) -> next epoch
    self.num_classes = meta.get('num_classes', 1)
    self.best = meta.get('best')
    self.steps = meta.get('steps', [])          # evaluated epochs
    self.epochs = meta.get('epochs', [])        # one clustering record per epoch
    self.index = meta.get('index', 0)

  def meta(self) -> dict:
    return {'epoch': self.epoch, 'phase': self.phase, 'num_classes': self.num_classes,
            'best': self.best, 'steps': self.steps, 'epochs': self.epochs, 'index': self.index}


def quality(labels: np.ndarray, true_ids: np.ndarray) -> dict:
  """Cluster quality of all real images, outliers counted as clusters of one (reporting only)."""
  labels = np.asarray(labels).copy()
  out = labels < 0
  labels[out] = labels.max() + 1 + np.arange(out.sum())
  return cluster_metrics.cluster_quality(labels, true_ids)


def check_clusters(config, labels: np.ndarray, epoch: int) -> None:
  """One line when an epoch's clustering cannot be trained on."""
  if labels.max() < 0:
    raise configlib.ConfigError(
        f'config.density.eps={config.density.eps!r}: DBSCAN found no cluster at epoch {epoch} '
        f'(every image an outlier); expected a larger eps or a smaller density.min_samples')
  largest = int(np.bincount(labels[labels >= 0]).max())
  if config.density.instances > largest:
    raise configlib.ConfigError(
        f'config.density.instances={config.density.instances!r}: expected at most the largest '
        f'cluster ({largest} images at epoch {epoch}), so that a batch holds K distinct images '
        'of a cluster')


def epoch_batches(config, support: SupportSets, labels: np.ndarray, support_size: int, *,
                  epoch: int, mesh):
  """The epoch's P x K batches (rows in order), each image drawn as itself or one of its fakes."""
  d = config.density
  rows = cluster_memory.pk_rows(labels, instances=d.instances, batch_size=d.batch_size,
                                num_steps=d.iters_per_epoch, seed=config.seed, epoch=epoch)
  slots = pipeline.support_slots(len(rows), support_size, seed=config.seed, epoch=epoch,
                                 real_prob=config.train.real_prob)
  sequence = np.stack([rows, slots], axis=1)
  # train_batches visits its items in epoch_permutation order: place the P x K sequence so that
  # this order reads it back as built.
  order = pipeline.epoch_permutation(len(sequence), config.seed, epoch)
  items = np.empty_like(sequence)
  items[order] = sequence
  return pipeline.train_batches(
      lambda item: support.support_image(*item), items, labels[items[:, 0]],
      batch_size=d.batch_size, height=config.data.height, width=config.data.width,
      seed=config.seed, epoch=epoch, mesh=mesh, data_config=config.data, drop_remainder=True,
      prefetch=config.data.prefetch, threads=config.data.decode_threads)


def train_reid(config, sets, store, mesh, paths) -> dict:
  """Runs (or resumes) the density head; writes <workdir>/reid/results.json and the kept model."""
  d = config.density
  mcfg = cluster_memory.model_config(config)     # what extraction, evaluation and export build
  train = sets.train
  n = len(train)
  support = SupportSets(train.image, store, camids=train.camids)
  size = support.size if (store is not None and d.use_fakes) else 1
  if d.instances > n:
    raise configlib.ConfigError(f'config.density.instances={d.instances!r}: expected at most the '
                                f'{n} training images')
  reid_dir = paths.reid
  ckpt, writer = common.open_records(config, reid_dir)
  train_step = cluster_memory.make_train_step(config, mesh)

  run = _Run(ckpt.restore_meta())
  state = cluster_memory.create_train_state(config, jax.random.key(config.seed), mesh)
  labels = np.full(n, -1, np.int32)
  if ckpt.latest_index() is not None:
    dim = state.table.shape[1]
    state = cluster_memory.with_memory(state, np.zeros((run.num_classes, dim), np.float32))  # shape only
    restored = ckpt.restore({'state': state, 'labels': labels})
    state, labels = restored['state'], np.asarray(restored['labels'], np.int32)
    logging.info('resumed at epoch %d (%s), %d clusters', run.epoch, run.phase, run.num_classes)

  def save():
    run.index += 1
    ckpt.save(run.index, {'state': state, 'labels': labels}, run.meta())

  while run.epoch < d.epochs:
    e = run.epoch
    if run.phase == 'cluster':
      t0 = time.time()
      feats = extract.extract_support_features(
          state.variables, mcfg, support.support_image, n, size, mesh=mesh,
          desc=f'epoch {e + 1} features')
      labels = dbscan.cluster(feats if size > 1 else feats[:, 0], k1=d.k1, k2=d.k2, eps=d.eps,
                              min_samples=d.min_samples, support_size=size,
                              block_size=config.cluster.block_size,
                              matmul_dtype=config.cluster.matmul_dtype, mesh=mesh)
      check_clusters(config, labels, e + 1)
      state = cluster_memory.with_memory(state, dbscan.cluster_centers(feats[:, 0], labels))
      run.num_classes = int(labels.max()) + 1
      # Training identities are read here for reporting only; the method never sees them.
      rec = {'epoch': e + 1, 'clusters': run.num_classes,
             'outliers': int((labels < 0).sum()), **quality(labels, train.pids),
             'seconds': time.time() - t0}
      run.epochs.append(rec)
      if parallel.is_primary():
        common.save_labels(reid_dir / 'labels' / f'epoch_{e + 1:03d}.npy', labels)
      writer.write(e + 1, {k: v for k, v in rec.items() if k != 'epoch'}, prefix='cluster/')
      logging.info('epoch %d: %d clusters, %d outliers, pairwise precision %.3f recall %.3f '
                   '(%.1f s)', e + 1, rec['clusters'], rec['outliers'],
                   rec['pairwise_precision'], rec['pairwise_recall'], rec['seconds'])
      run.phase = 'train'
      save()

    if run.phase == 'train':
      lr = cluster_memory.learning_rate(d, e)
      t0 = time.time()
      state, metrics = reid_train.train_epoch(
          train_step, state, epoch_batches(config, support, labels, size, epoch=e, mesh=mesh),
          lr=lr, num_steps=d.iters_per_epoch, desc=f'epoch {e + 1}/{d.epochs}',
          log_every=config.train.log_every,
          log_fn=lambda k, mt: writer.write(k, mt, prefix='train/'))
      logging.info('epoch %d/%d: loss %.4f accuracy %.3f lr %g (%.0f s)', e + 1, d.epochs,
                   metrics.get('loss', float('nan')), metrics.get('accuracy', float('nan')), lr,
                   time.time() - t0)
      writer.write(int(jax.device_get(state.step)), metrics, prefix='epoch/')
      last = e + 1 == d.epochs
      run.phase = 'evaluate' if last or (e + 1) % d.eval_every == 0 else 'cluster'
      if run.phase == 'cluster':
        run.epoch += 1
      save()

    if run.phase == 'evaluate':
      record = _evaluate(config, mcfg, sets, state, mesh, reid_dir, run, writer)
      run.steps.append(record)
      run.best = common.keep_if_better(paths, state.variables, mcfg, record, run.best)
      run.epoch, run.phase = run.epoch + 1, 'cluster'
      save()

  common.finish(paths, state.variables, mcfg, _results(run), ckpt, writer)
  return {'epochs': len(run.epochs), 'clusters': run.num_classes}


def _evaluate(config, mcfg, sets, state, mesh, reid_dir, run, writer) -> dict:
  """The record of an evaluated epoch: test (and validation) metrics and that epoch's clusters."""
  e = run.epoch + 1
  t0 = time.time()
  test, val, feats = common.evaluate_sets(state.variables, mcfg, sets, mesh, f'epoch {e}')
  cl = run.epochs[-1]
  record = {'step': e, 'clusters': cl['clusters'], **test}
  if val is not None:
    record['val'] = val
  record['cluster_quality'] = {k: cl[k] for k in ('num_clusters', 'purity', 'pairwise_precision',
                                                  'pairwise_recall', 'pairwise_f')}
  if parallel.is_primary():
    name = 'first.npz' if not run.steps else 'last.npz'
    common.save_features(reid_dir / 'features' / name, feats, sets.query, sets.gallery)
  common.write_evaluation(writer, e, record)
  logging.info('epoch %d (%d clusters): rank1 %.1f mAP %.1f (%.0f s)', e, record['clusters'],
               100 * test['rank1'], 100 * test['mAP'], time.time() - t0)
  common.print_evaluation(f'epoch {e}', record)
  return record


def _results(run: _Run) -> dict:
  """results.json as the paper's method writes it (`steps` = evaluated epochs), plus `method` and
  the per-epoch clustering records."""
  out = common.results_of(run.steps, run.best)
  out['method'] = 'density'
  out['epochs'] = run.epochs
  return out
