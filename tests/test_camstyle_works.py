"""On the synthetic data set, a briefly trained StarGAN moves images to the target
camera's style (an independent classifier trained on real images agrees) and keeps who is in them.

The identity measure is colour-normalised pixels (each image's channels standardised to zero mean
and unit variance). The synthetic cameras differ by colour cast, saturation, brightness, contrast
and gamma, which are (close to) per-channel affine maps that this normalisation removes, while the
figure's layout and its clothing's colour contrasts remain. The fake is compared with its source
and with other identities' real images IN THE TARGET CAMERA: those share the fake's camera, so a
fake that had only learned the camera would be nearer to them than to its source.

The last test is the method end to end: step 0 of the re-ID network (every image its own class)
trained on these support sets retrieves held-out identities 2.5x better than raw pixels or the
untrained network (on real images alone, step 0 learns the cameras instead and gains little; see
tests/test_reid_works.py).
"""

import copy
import os
import pathlib

import jax
import numpy as np
import pytest

from jaxreid import parallel
from jaxreid.camstyle import generate, store, train
from jaxreid.camstyle.quality import colour_normalised, colour_statistics
from jaxreid.configlib import load_sibling
from jaxreid.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
L, HEIGHT, WIDTH = 4, 64, 32
STEP0_EPOCHS, STEP0_DECAY = 40, 30   # step 0 of the re-ID network in the last test
# The seed of the data, the StarGAN and the re-ID network (`JAXREID_WORKS_SEED=N pytest -s
# tests/test_camstyle_works.py` repeats both tests at seed N and prints what they measure). CI runs
# seed 0. The bars below sit under every value measured over seeds 0-4 (8 CPU devices as in CI,
# `net.init`, the identity-mapping term camstyle.lambda_idt = 1 that use_cpu_stargan sets): fakes ->
# target camera 0.998 / 0.859 / 0.935 / 0.857 / 1.000; fake nearer its source than the average
# other identity 0.992 / 0.985 / 0.984 / 0.998 / 0.991, than every other identity 0.906 / 0.863 /
# 0.850 / 0.951 / 0.907. Without the term (lambda_idt = 0, the paper's StarGAN) the person was lost
# at seed 1 (0.094 nearer its source than the average other identity) and the camera change not
# yet learned at seed 2 (0.693 to the target camera); docs/results.md has the table.
SEED = int(os.environ.get('JAXREID_WORKS_SEED', '0'))


class _Split:
  """The training part of a synthetic set, as the trainer sees it: images and cameras only."""

  def __init__(self, images, camids):
    self._images, self.camids, self.num_cameras = images, camids, L
    self.file_names = [f'{i:05d}.jpg' for i in range(len(images))]

  def __len__(self):
    return len(self._images)

  def image(self, i):
    return self._images[i]


def fit_camera_classifier(features, cameras, steps=500, lr=0.5, weight_decay=1e-3):
  """Multinomial logistic regression by gradient descent; returns features -> camera."""
  mu, sd = features.mean(0), features.std(0) + 1e-6
  z = (features - mu) / sd
  w, b = np.zeros((z.shape[1], L)), np.zeros(L)
  onehot = np.eye(L)[cameras]
  for _ in range(steps):
    logits = z @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w -= lr * (z.T @ (p - onehot) / len(z) + weight_decay * w)
    b -= lr * (p - onehot).mean(0)
  return lambda f: np.argmax(((f - mu) / sd) @ w + b, axis=1)


@pytest.fixture(scope='module')
def camstyle_run(tmp_path_factory):
  """The synthetic config's StarGAN trained on a small synthetic set, and its fakes."""
  tmp_path = tmp_path_factory.mktemp('camstyle_works')
  data = synthetic.generate(num_cameras=L, num_train_ids=40, num_test_ids=40, images_per_id=8,
                            height=HEIGHT, width=WIDTH, seed=SEED, progress=False)
  is_train = data.splits == 'train'
  split = _Split(data.images[is_train], data.camids[is_train])  # identities stay out of reach

  # The synthetic config's StarGAN and rates, trained for 2/3 of its iterations (test time).
  config = load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config()
  config.seed = SEED
  c = config.camstyle
  assert (c.height, c.width) == (HEIGHT, WIDTH)
  c.num_iters = 400
  c.checkpoint_every = c.sample_every = c.num_iters
  # One device: 8 host "devices" on 2 cores only add overhead (the mesh is tested elsewhere).
  mesh = parallel.make_mesh(jax.devices()[:1])
  summary = train.train(config, split, tmp_path / 'camstyle', mesh)
  gen = generate.generate(config, split, tmp_path / 'camstyle', tmp_path / 'fakes', mesh)
  return dict(data=data, is_train=is_train, split=split, config=config, mesh=mesh,
              summary=summary, gen=gen, tmp_path=tmp_path,
              store=store.FakeStore.open(tmp_path / 'fakes'))


@pytest.mark.slow
def test_fakes_take_the_target_camera_style_and_keep_the_identity(camstyle_run):
  r = camstyle_run
  data, is_train, split, tmp_path = r['data'], r['is_train'], r['split'], r['tmp_path']
  summary, gen, c = r['summary'], r['gen'], r['config'].camstyle
  images, camids, pids = data.images[is_train], data.camids[is_train], data.pids[is_train]
  assert (tmp_path / 'camstyle' / 'samples' / f'step_{c.num_iters:07d}.png').is_file()
  assert pathlib.Path(gen['figure']).is_file()

  fakes_store = r['store']
  src, tgt, fakes = [], [], []
  for i in range(len(split)):
    for k in fakes_store.target_cameras(i):
      src.append(i)
      tgt.append(k)
      fakes.append(fakes_store.fake(i, k))
  src, tgt, fakes = np.array(src), np.array(tgt), np.stack(fakes)

  classify = fit_camera_classifier(colour_statistics(images), camids)
  held_out = ~is_train
  real_acc = np.mean(classify(colour_statistics(data.images[held_out])) == data.camids[held_out])
  to_target = np.mean(classify(colour_statistics(fakes)) == tgt)
  to_source = np.mean(classify(colour_statistics(fakes)) == camids[src])

  reals_n, fakes_n = colour_normalised(images), colour_normalised(fakes)
  nearest, beaten = [], []
  for j in range(len(fakes)):
    d_source = np.linalg.norm(reals_n[src[j]] - fakes_n[j])
    others = np.flatnonzero((camids == tgt[j]) & (pids != pids[src[j]]))
    d_others = np.linalg.norm(reals_n[others] - fakes_n[j], axis=1)
    nearest.append(d_source < d_others.min())
    beaten.append(np.mean(d_source < d_others))
  print(f'\ncamstyle works: {summary["iters"]} iterations; camera classifier on held-out reals '
        f'{real_acc:.3f}; fakes -> target camera {to_target:.3f} (-> source camera '
        f'{to_source:.3f}); fake nearer its source than every other identity in the target camera '
        f'{np.mean(nearest):.3f}, than the average one {np.mean(beaten):.3f}')
  assert real_acc >= 0.95  # the classifier knows the cameras
  # Copies of the source would score ~0 here (they are classified as the source camera), chance
  # is 1 in 4; measured 0.857 or more over five seeds.
  assert to_target >= 0.75
  # Far above what camera-only fakes give: a per-camera average beats almost no other identity
  # (measured: 0.02 - 0.15 of them, nearest ~0), a random image half of them, and the nearest of
  # ~80 others by chance 1 in 80. Measured over five seeds: >= 0.984 and >= 0.850.
  assert np.mean(beaten) >= 0.95 and np.mean(nearest) >= 0.6


@pytest.mark.slow
def test_step0_on_support_sets_lifts_retrieval_well_above_baselines(camstyle_run):
  """Step 0 (every image its own class) on support sets with these fakes learns what a person
  looks like in every camera: retrieval of held-out identities far above raw pixels and the
  untrained network, and above step 0 on the real images alone."""
  from jaxreid import evaluation
  from jaxreid.support_sets import SupportSets
  from jaxreid.reid import extract_features, sampling, train as reid_train

  r = camstyle_run
  data, is_train, split, mesh = r['data'], r['is_train'], r['split'], r['mesh']
  cfg = copy.deepcopy(r['config'])   # the fixture's config is shared with the other test
  cfg.train.step0_epochs, cfg.train.step0_lr_decay_epoch = STEP0_EPOCHS, STEP0_DECAY
  cfg.train.backbone_lr_mult = 0.1   # as when the bars below were measured
  q, g = np.flatnonzero(data.splits == 'query'), np.flatnonzero(data.splits == 'gallery')

  def score(features):
    res = evaluation.evaluate_features(features[q], features[g], data.pids[q], data.pids[g],
                                       data.camids[q], data.camids[g], max_rank=10)
    return float(res['cmc'][0]), float(res['mAP'])

  def net_score(state):
    return score(extract_features(state.variables, cfg, lambda i: data.images[i],
                                  np.arange(len(data.images)), mesh=mesh))

  def step0(fakes):
    support = SupportSets(split.image, fakes, camids=split.camids)
    n = len(split)
    labels = np.arange(n, dtype=np.int32)
    state = reid_train.create_train_state(cfg, n, jax.random.key(SEED), mesh)
    step = reid_train.make_train_step(cfg, mesh)
    for epoch in range(cfg.train.step0_epochs):
      batches = sampling.support_batches(support.support_image, support.size, labels, config=cfg,
                                         epoch=epoch, mesh=mesh, slot_camera=support.slot_camera)
      state, _ = reid_train.train_epoch(step, state, batches,
                                        lr=reid_train.learning_rate(cfg.train, 0, epoch),
                                        num_steps=sampling.steps_per_epoch(n, cfg))
    return net_score(state)

  raw_score = score(evaluation.raw_pixel_features(
      data.images, data.images[is_train].astype(np.float32).mean(0)))
  untrained = net_score(reid_train.create_train_state(cfg, 1, jax.random.key(SEED), mesh))
  reals_only = step0(None)
  with_fakes = step0(r['store'])
  print(f'\nstep 0, {STEP0_EPOCHS} epochs (rank-1, mAP): raw pixels {raw_score}, untrained '
        f'{untrained}, reals only {reals_only}, support sets with fakes {with_fakes}')
  # Seeds 0-4 (40 epochs, 8 devices), rank-1 / mAP with fakes against the better of raw pixels and
  # the untrained network: 3.3x / 3.2x, 1.9x / 1.9x, 11x / 3.3x, 3.4x / 2.6x, 9x / 3.1x (rank-1
  # 0.077-0.150); against step 0 on the real images alone at least 2.8x / 1.6x.
  best = np.maximum(raw_score, untrained)
  assert with_fakes[0] >= 1.5 * best[0] and with_fakes[0] >= 0.05, (with_fakes, best)
  assert with_fakes[1] >= 1.5 * best[1], (with_fakes, best)
  assert with_fakes[1] > reals_only[1] and with_fakes[0] > reals_only[0], (with_fakes, reals_only)
