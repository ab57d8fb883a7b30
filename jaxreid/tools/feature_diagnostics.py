"""Does a feature space group images by person or by camera? The start the method would merge from.

For a data set's training images it reports, from identities and cameras read for this measurement
only: how often an image's nearest neighbour is the same person and the same camera, how often its
nearest image in ANOTHER camera is the same person (what cross-camera merging needs), and where
the first bottom-up merge steps and the density head's first clustering would put images
(pairwise precision within and across cameras, cameras per cluster), each from the features as
they are and with each camera's mean training feature subtracted. On the test split: retrieval
as it is and camera-centred.

  python -m jaxreid.tools.feature_diagnostics --workdir=runs/x [--merge_steps=10] [--max_images=8000]

`--workdir` is any run's work dir (its config names the data set); the features are
EfficientNet-Lite0's ImageNet ones at the config's image size.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxreid.cluster_metrics import cluster_quality


def neighbour_rates(features: np.ndarray, pids: np.ndarray, cams: np.ndarray,
                    block: int = 1024) -> dict:
  """Nearest-neighbour identity / camera agreement, and the nearest other-camera image's identity."""
  f = np.asarray(features, np.float32)
  sq = np.sum(f ** 2, 1)
  nn, nn_cross = np.empty(len(f), np.int64), np.full(len(f), -1, np.int64)
  for s in range(0, len(f), block):
    rows = np.arange(s, min(s + block, len(f)))
    d = sq[rows, None] + sq[None] - 2 * f[rows] @ f.T
    d[np.arange(len(rows)), rows] = np.inf
    nn[rows] = d.argmin(1)
    d[cams[rows, None] == cams[None]] = np.inf
    has = np.isfinite(d).any(1)
    nn_cross[rows[has]] = d[has].argmin(1)
  cross = nn_cross >= 0
  return {'nn_same_identity': float(np.mean(pids[nn] == pids)),
          'nn_same_camera': float(np.mean(cams[nn] == cams)),
          'cross_camera_nn_same_identity': float(np.mean(pids[nn_cross[cross]] == pids[cross]))}


def pair_precision_by_camera(labels: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> dict:
  """Same-cluster pairs split into same-camera and cross-camera ones, with each one's precision."""
  counts = {'same_camera_pairs': 0, 'same_camera_correct': 0, 'cross_camera_pairs': 0,
            'cross_camera_correct': 0}
  order = np.argsort(labels, kind='stable')
  for members in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
    if len(members) < 2:
      continue
    i, j = np.triu_indices(len(members), 1)
    cross = cams[members][i] != cams[members][j]
    right = pids[members][i] == pids[members][j]
    counts['same_camera_pairs'] += int(np.sum(~cross))
    counts['same_camera_correct'] += int(np.sum(~cross & right))
    counts['cross_camera_pairs'] += int(np.sum(cross))
    counts['cross_camera_correct'] += int(np.sum(cross & right))
  for kind in ('same_camera', 'cross_camera'):
    pairs = counts[f'{kind}_pairs']
    counts[f'{kind}_precision'] = counts[f'{kind}_correct'] / pairs if pairs else None
  return counts


def _clusters_summary(labels, pids, cams) -> dict:
  keep = labels >= 0
  labels, pids, cams = labels[keep], pids[keep], cams[keep]
  q = cluster_quality(labels, pids)
  per_cluster = [len(np.unique(cams[labels == c])) for c in np.unique(labels)]
  return {'clusters': q['num_clusters'], 'clustered_images': int(keep.sum()),
          'pairwise_precision': q['pairwise_precision'], 'pairwise_recall': q['pairwise_recall'],
          'cameras_per_cluster': float(np.mean(per_cluster)),
          **pair_precision_by_camera(labels, pids, cams)}


def merge_trajectory(features, pids, cams, *, steps: int, merge_percent: float,
                     size_penalty: float) -> list[dict]:
  """Bottom-up merging (no fakes, no retraining) from singletons; a summary after each step."""
  from jaxreid.clustering import merge
  labels = np.arange(len(features))
  per_step = int(len(features) * merge_percent)  # as Algorithm 1: m = int(N * mp)
  out = []
  for step in range(1, steps + 1):
    labels = merge.merge_step(features, None, labels, per_step, size_penalty)
    out.append({'step': step, **_clusters_summary(labels, pids, cams)})
  return out


def density_clusters(features, pids, cams, density_config) -> dict:
  """The density head's clustering of these features (its first epoch's, from this start)."""
  from jaxreid.clustering import density
  d = density_config
  labels = density.cluster(features, k1=d.k1, k2=d.k2, eps=d.eps, min_samples=d.min_samples)
  return {'eps': float(d.eps), 'outliers': int(np.sum(labels < 0)),
          **_clusters_summary(labels, pids, cams)}


def camera_centred(features: np.ndarray, cams: np.ndarray, means: dict) -> np.ndarray:
  """Each feature minus its camera's mean, L2-normalised again."""
  x = features - np.stack([means[c] for c in cams])
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run(workdir, merge_steps: int = 10, max_images: int = 8000, seed: int = 0) -> dict:
  """All the diagnostics for the ImageNet features of the run's data; written beside the run."""
  from jaxreid import evaluation, records
  from jaxreid.camstyle import quality
  from jaxreid.data import augment
  root = pathlib.Path(workdir)
  config, splits = quality.open_run(root)
  embed = quality.imagenet_features(config)
  h, w = int(config.data.height), int(config.data.width)

  def features(split, rows):
    return embed(np.stack([augment.resize(split.image(i), h, w) for i in rows]))

  train = splits['train']
  rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_images])
  f, pids, cams = features(train, rows), train.pids[rows], train.camids[rows]
  q, g = splits['query'], splits['gallery']
  fq, fg = features(q, range(len(q))), features(g, range(len(g)))

  def retrieval(a, b):
    r = evaluation.evaluate_features(a, b, q.pids, g.pids, q.camids, g.camids, max_rank=10)
    return {'rank1': float(r['cmc'][0]), 'rank5': float(r['cmc'][4]), 'mAP': float(r['mAP'])}

  means = {c: f[cams == c].mean(0) for c in np.unique(cams)}
  fc = camera_centred(f, cams, means)

  def start(x):   # what the first merges / clustering would see from features x
    return {'train_neighbours': neighbour_rates(x, pids, cams),
            'merge_steps': merge_trajectory(x, pids, cams, steps=merge_steps,
                                            merge_percent=float(config.cluster.merge_percent),
                                            size_penalty=float(config.cluster.size_penalty)),
            'density': density_clusters(x, pids, cams, config.density)}

  out = {'features': 'imagenet efficientnet_lite0', 'train_images': int(len(rows)),
         'test': retrieval(fq, fg),
         'test_camera_centred': retrieval(camera_centred(fq, q.camids, means),
                                          camera_centred(fg, g.camids, means)),
         **start(f), 'camera_centred': start(fc)}
  records.write_json_atomic(root / 'feature_diagnostics.json', out)
  return out


def main(argv):
  del argv
  from absl import flags
  from jaxreid.camstyle.quality import QualityError
  from jaxreid.data.layouts import DataError
  from jaxreid.reid.pretrained import PretrainedError
  f = flags.FLAGS
  try:
    r = run(f.workdir, f.merge_steps, f.max_images)
  except (QualityError, DataError, PretrainedError) as e:
    raise SystemExit(f'error: {e}') from None
  t, tc = r['test'], r['test_camera_centred']
  print(f'test rank-1 / mAP {100 * t["rank1"]:.1f} / {100 * t["mAP"]:.1f}, camera-centred '
        f'{100 * tc["rank1"]:.1f} / {100 * tc["mAP"]:.1f}')

  def share(x):
    return '-' if x is None else f'{x:.3f}'
  for title, part in (('features as they are', r), ("each camera's mean subtracted",
                                                     r['camera_centred'])):
    n, d = part['train_neighbours'], part['density']
    print(f'-- training images, {title}')
    print(f'nearest neighbour: same identity {n["nn_same_identity"]:.3f}, same camera '
          f'{n["nn_same_camera"]:.3f}; nearest other-camera image same identity '
          f'{n["cross_camera_nn_same_identity"]:.3f}')
    for s in part['merge_steps']:
      print(f'merge step {s["step"]}: {s["clusters"]} clusters, precision '
            f'{s["pairwise_precision"]:.3f}, same-camera pairs {s["same_camera_pairs"]} (precision '
            f'{share(s["same_camera_precision"])}), cross-camera pairs {s["cross_camera_pairs"]} '
            f'(precision {share(s["cross_camera_precision"])})')
    print(f'density (eps {d["eps"]}): {d["clusters"]} clusters, {d["outliers"]} outliers, '
          f'precision {d["pairwise_precision"]:.3f}, {d["cameras_per_cluster"]:.2f} cameras per '
          'cluster')


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Work dir of a run (its config names the data set).')
  flags.DEFINE_integer('merge_steps', 10, 'Bottom-up merge steps to trace.')
  flags.DEFINE_integer('max_images', 8000, 'Training images used (a seeded random subset).')
  flags.mark_flag_as_required('workdir')
  app.run(main)
