"""Do the fakes carry the target camera's look and keep the person? Measured on a run's store.

Two measures, each against the same measure on real images (so a number reads against what the
measure can do at all):

- camera: a logistic-regression camera classifier, fitted on half of the real training images
  (split by identity), says which camera a fake looks like. Reported: its accuracy on the held-out
  reals, and how often it names a fake's target camera (and its source camera).
- identity: in a feature space, is a fake nearer its source image than the real images of OTHER
  people in the target camera? Those share the fake's camera, so a fake that had learnt only the
  camera (or a camera mark) would be nearer to them. Reported: the mean fraction of those other
  images that the source beats, and how often it beats all of them; as reference, the same for the
  source's own real images in the target camera (a true cross-camera match).

Reals are passed through the same down-and-up resize as the fakes (the StarGAN's size and back), so
the only difference the measures see is the generator. Features: `imagenet` (EfficientNet-Lite0's
pooled ImageNet features) or `colour` (per-channel colour
statistics and region means for the camera, colour-normalised pixels for the identity: right for
cameras that differ by colour, as the synthetic ones do). Identities are read for this measurement
only: nothing of it feeds training.

  python -m jaxreid.camstyle.quality --workdir=runs/x [--features=imagenet] [--max_images=2000]
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import ml_collections
import numpy as np

from jaxreid.data import augment


class QualityError(ValueError):
  """The run cannot be measured (no fakes, unknown features); one line."""


FEATURES = ('imagenet', 'colour')


def colour_statistics(images: np.ndarray) -> np.ndarray:
  """Per-channel mean, spread, 10/50/90 % quantiles and a 4 x 2 grid of region means."""
  x = images.astype(np.float32) / 255
  n, h, w, _ = x.shape
  flat = x.reshape(n, -1, 3)
  regions = x[:, :h - h % 4, :w - w % 2].reshape(n, 4, h // 4, 2, w // 2, 3).mean((2, 4))
  return np.concatenate([flat.mean(1), flat.std(1), *np.percentile(flat, (10, 50, 90), axis=1),
                         regions.reshape(n, -1)], axis=1)


def colour_normalised(images: np.ndarray) -> np.ndarray:
  """Each image's channels standardised: removes per-channel affine colour changes."""
  x = images.astype(np.float32)
  x = (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1.0)
  return x.reshape(len(x), -1)


def imagenet_features(config: ml_collections.ConfigDict, mesh=None) -> Callable:
  """images uint8 [n, h, w, 3] -> L2-normalised pooled EfficientNet-Lite0 ImageNet features."""
  import jax
  from jaxreid import parallel
  from jaxreid.reid import extract_features, pretrained
  from jaxreid.reid import train as reid_train
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.arch, cfg.model.init_checkpoint = 'efficientnet_lite0', 'efficientnet_lite0'
  cfg.model.embedding_dim, cfg.model.frozen_stages = 1280, 0
  # The weights' own input convention, (x - 127) / 128.
  cfg.data.mean, cfg.data.std = (127 / 255,) * 3, (128 / 255,) * 3
  pretrained.check_init_checkpoint(cfg.model, cfg.data.height, cfg.data.width)
  mesh = mesh or parallel.make_mesh(jax.devices()[:1])
  variables = reid_train.create_train_state(cfg, 1, jax.random.key(0), mesh).variables

  def features(images: np.ndarray) -> np.ndarray:
    f = extract_features(variables, cfg, lambda i: images[i], np.arange(len(images)), mesh=mesh,
                         desc='imagenet features')
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  return features


def camera_measure(real_feats, real_cams, real_pids, fake_feats, src, tgt, seed: int = 0) -> dict:
  """Fits a camera classifier on half of the identities' real images; scores held-out reals and fakes."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  ids = np.unique(real_pids)
  fit_ids = np.random.default_rng(seed).permutation(ids)[:len(ids) // 2]
  fit = np.isin(real_pids, fit_ids)
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
  clf.fit(real_feats[fit], real_cams[fit])
  held_out = np.mean(clf.predict(real_feats[~fit]) == real_cams[~fit])
  # Fakes of the held-out identities only: the classifier never saw their sources.
  mine = ~fit[src]
  pred = clf.predict(fake_feats[mine])
  return {'camera_acc_real_held_out': float(held_out),
          'fake_to_target_camera': float(np.mean(pred == tgt[mine])),
          'fake_to_source_camera': float(np.mean(pred == real_cams[src[mine]])),
          'camera_chance': float(1 / len(np.unique(real_cams)))}


def identity_measure(real_feats, real_cams, real_pids, fake_feats, src, tgt) -> dict:
  """Fraction of other people's target-camera reals that the source beats, for fakes and for
  the source's own real images in the target camera (the reference)."""
  real_feats = np.asarray(real_feats, np.float64)
  sq = np.sum(real_feats ** 2, axis=1)

  def beats(queries, anchors, cams, pids):
    """Per query: distance to its anchor against distances to every other person's image in cams."""
    queries = np.asarray(queries, np.float64)
    d = np.sqrt(np.maximum(np.sum(queries ** 2, 1)[:, None] + sq[None] - 2 * queries @ real_feats.T, 0))
    d_anchor = np.linalg.norm(queries - real_feats[anchors], axis=1)
    others = (real_cams[None] == cams[:, None]) & (real_pids[None] != pids[:, None])
    closer = (d_anchor[:, None] < d) & others
    return closer.sum(1) / np.maximum(others.sum(1), 1), closer.sum(1) == others.sum(1)

  fake_beats, fake_nearest = beats(fake_feats, src, tgt, real_pids[src])
  # Reference: every real image of a source's person in another camera, against its source.
  pairs = [(i, j) for i in np.unique(src)
           for j in np.flatnonzero((real_pids == real_pids[i]) & (real_cams != real_cams[i]))]
  out = {'fake_beats_others': float(fake_beats.mean()), 'fake_nearest': float(fake_nearest.mean()),
         'real_match_beats_others': None, 'real_match_nearest': None, 'real_matches': len(pairs)}
  if pairs:
    i, j = np.array(pairs).T
    real_beats, real_nearest = beats(real_feats[j], i, real_cams[j], real_pids[i])
    out.update(real_match_beats_others=float(real_beats.mean()),
               real_match_nearest=float(real_nearest.mean()))
  return out


def measure(real_images: np.ndarray, real_cams, real_pids, fakes: np.ndarray, src, tgt,
            features: str, *, stargan_size: tuple[int, int], config=None, seed: int = 0) -> dict:
  """Both measures on uint8 reals [n, h, w, 3] and fakes [m, h, w, 3] (fake j: src[j] -> tgt[j])."""
  if features not in FEATURES:
    raise QualityError(f'--features={features!r}: expected one of {FEATURES}')
  h, w = real_images.shape[1:3]
  degraded = np.stack([augment.resize(augment.resize(x, *stargan_size), h, w) for x in real_images])
  real_cams, real_pids = np.asarray(real_cams), np.asarray(real_pids)
  src, tgt = np.asarray(src), np.asarray(tgt)
  if features == 'colour':
    cam_r, cam_f = colour_statistics(degraded), colour_statistics(fakes)
    id_r, id_f = colour_normalised(degraded), colour_normalised(fakes)
  else:
    embed = imagenet_features(config)
    cam_r = id_r = embed(degraded)
    cam_f = id_f = embed(fakes)
  out = {'features': features, 'num_reals': int(len(real_images)), 'num_fakes': int(len(fakes))}
  out.update(camera_measure(cam_r, real_cams, real_pids, cam_f, src, tgt, seed))
  out.update(identity_measure(id_r, real_cams, real_pids, id_f, src, tgt))
  return out


def open_run(workdir) -> tuple[ml_collections.ConfigDict, dict]:
  """The config a run's work dir was made with, and its data splits (built once, then reused)."""
  from jaxreid import data
  root = pathlib.Path(workdir)
  if not (root / 'config.json').is_file():
    raise QualityError(f'--workdir={root}: no config.json (expected the work dir of a jaxreid run)')
  config = ml_collections.ConfigDict(json.loads((root / 'config.json').read_text()))
  tfds_dir = pathlib.Path(config.data.tfds_dir) if config.data.tfds_dir else root / 'tfds'
  builder = data.prepare(config.data, tfds_dir, synthetic_config=config.synthetic)
  return config, data.splits_of(builder, config.data.name)


def measure_run(workdir, features: str = 'imagenet', max_images: int = 2000, seed: int = 0) -> dict:
  """Measures the fakes store of the run in `workdir` on up to `max_images` training images."""
  from jaxreid.camstyle.store import FakeStore
  root = pathlib.Path(workdir)
  if (root / 'config.json').is_file() and not (root / 'fakes' / 'index.json').is_file():
    raise QualityError(f'{root / "fakes"}: no fakes store (expected a run with camstyle.enabled '
                       'whose fakes stage has finished)')
  config, splits = open_run(root)
  train = splits['train']
  store = FakeStore.open(root / 'fakes')
  rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_images])
  h, w = int(config.data.height), int(config.data.width)
  reals = np.stack([augment.resize(train.image(i), h, w) for i in rows])
  src, tgt, fakes = [], [], []
  for k, i in enumerate(rows):
    for cam in store.target_cameras(int(i)):
      src.append(k)
      tgt.append(cam)
      fakes.append(augment.resize(store.fake(int(i), cam), h, w))
  result = measure(reals, train.camids[rows], train.pids[rows], np.stack(fakes), src, tgt,
                   features, stargan_size=(int(config.camstyle.height), int(config.camstyle.width)),
                   config=config, seed=seed)
  from jaxreid import records
  records.write_json_atomic(root / 'camstyle' / f'fakes_quality_{features}.json', result)
  return result


def summary_line(r: dict) -> str:
  ref = (f' (a real match: {r["real_match_beats_others"]:.3f} / {r["real_match_nearest"]:.3f})'
         if r.get('real_match_beats_others') is not None else '')
  return (f'{r["features"]} features, {r["num_fakes"]} fakes: camera classifier {r["camera_acc_real_held_out"]:.3f} '
          f'on held-out reals (chance {r["camera_chance"]:.2f}); fakes -> target camera '
          f'{r["fake_to_target_camera"]:.3f}, -> source camera {r["fake_to_source_camera"]:.3f}; '
          f'source beats {r["fake_beats_others"]:.3f} of the others, all of them '
          f'{r["fake_nearest"]:.3f}{ref}')


def main(argv):
  del argv
  from absl import flags
  from jaxreid.data.layouts import DataError
  from jaxreid.reid.pretrained import PretrainedError
  f = flags.FLAGS
  try:
    r = measure_run(f.workdir, f.features, f.max_images)
  except (QualityError, DataError, PretrainedError) as e:
    raise SystemExit(f'error: {e}') from None
  print(summary_line(r), flush=True)


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Work dir of a run whose fakes stage has finished.')
  flags.DEFINE_enum('features', 'imagenet', list(FEATURES), 'Feature space of both measures.')
  flags.DEFINE_integer('max_images', 2000, 'Training images measured (a seeded random subset).')
  flags.mark_flag_as_required('workdir')
  app.run(main)
