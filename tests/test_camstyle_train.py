"""StarGAN training: the WGAN-GP losses, the schedule, the mesh, checkpoints and resume."""

import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from jaxreid import parallel
from jaxreid.camstyle import stargan, train
from jaxreid.configlib import ConfigError, load_sibling
from jaxreid.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
L = 3


def _config(**overrides):
  config = load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config()
  c = config.camstyle
  c.height, c.width, c.load_height, c.load_width = 16, 8, 20, 10
  c.g_conv_dim, c.g_repeat_num, c.d_conv_dim, c.d_repeat_num = 2, 1, 2, 2
  c.batch_size, c.n_critic, c.sample_images = 8, 2, 3
  c.num_epochs, c.decay_epochs, c.num_iters = 4, 2, -1
  c.log_every = c.checkpoint_every = c.sample_every = 2
  for k, v in overrides.items():
    c[k] = v
  return config


class _NoIdentities:
  """A split with images and camera ids only: touching identity labels fails the test."""

  def __init__(self, n=16):
    rng = np.random.default_rng(0)
    self.camids = np.arange(n, dtype=np.int32) % L
    self.num_cameras = L
    self._images = rng.integers(0, 256, (n, 18, 9, 3), dtype=np.uint8)

  def __len__(self):
    return len(self.camids)

  def image(self, i):
    return self._images[i]

  def __getattr__(self, name):
    raise AssertionError(f'the StarGAN trainer read split.{name}; it may read images and camids only')


def _batch(config, n=8, seed=0):
  c, rng = config.camstyle, np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, c.height, c.width, 3), dtype=np.uint8),
          'camid': rng.integers(0, L, n).astype(np.int32),
          'target': rng.integers(0, L, n).astype(np.int32)}


def _reference_d_loss(config, state, batch, key):
  """WGAN-GP critic loss written out from StarGAN's definition, with the GP's input gradient per
  sample."""
  c = config.camstyle
  g, d = stargan.build(c, L)
  x = batch['image'].astype(np.float32) / 127.5 - 1
  d_apply = jax.jit(lambda x: d.apply({'params': state.d_params}, x))
  d_input_grad = jax.jit(jax.grad(lambda z: d.apply({'params': state.d_params}, z)[0].sum()))
  fake = np.asarray(jax.jit(g.apply)({'params': state.g_params}, x,
                                     jax.nn.one_hot(batch['target'], L)))
  src_real, cls_real = (np.asarray(a) for a in d_apply(x))
  alpha = np.asarray(jax.random.uniform(jax.random.fold_in(key, 0), (len(x), 1, 1, 1)))
  gp = 0.0
  for j in range(len(x)):  # one sample at a time: the penalty is per-sample by definition
    xh = alpha[j] * x[j:j + 1] + (1 - alpha[j]) * fake[j:j + 1]
    gp += (np.sqrt(np.sum(np.asarray(d_input_grad(xh)) ** 2)) - 1) ** 2 / len(x)
  z = cls_real - cls_real.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  ce = -np.mean(logp[np.arange(len(x)), batch['camid']])
  return -src_real.mean() + np.asarray(d_apply(fake)[0]).mean() + c.lambda_cls * ce + c.lambda_gp * gp


@pytest.fixture(scope='module')
def step8():
  """The jitted step on the 8-device mesh, compiled once: train() on _NoIdentities reuses it."""
  config = _config()
  mesh = parallel.make_mesh()
  total, _, decay = train.iterations(config.camstyle, len(_NoIdentities()))
  return config, mesh, train.make_train_step(config, L, total, decay, mesh)


@pytest.mark.slow
def test_critic_loss_is_the_wgan_gp_loss_of_the_reference(step8):
  config, mesh, step = step8
  state = parallel.replicate(train.init_state(config, L), mesh)
  expected = _reference_d_loss(config, state, _batch(config), state.rng)
  _, metrics = step(state, parallel.shard_batch(_batch(config), mesh), 0)
  np.testing.assert_allclose(float(metrics['d_loss']), expected, rtol=1e-4)
  assert 'g_loss' not in metrics  # iteration 0 of n_critic = 2: D only


@pytest.mark.slow
def test_generator_moves_every_n_critic_iterations_only(step8):
  config, mesh, step = step8
  state = parallel.replicate(train.init_state(config, L), mesh)
  step = train.TrainStep(step.d_step, step.g_step, n_critic=3)
  g0 = jax.tree.map(np.asarray, state.g_params)
  changed = []
  for it in range(3):
    d_before = jax.tree.map(np.asarray, state.d_params)
    state, metrics = step(state, parallel.shard_batch(_batch(config, seed=it), mesh), it)
    g_now = jax.tree.map(np.asarray, state.g_params)
    changed.append(any(not np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(g0), jax.tree.leaves(g_now))))
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(d_before), jax.tree.leaves(jax.tree.map(np.asarray, state.d_params))))
  assert changed == [False, False, True] and 'g_rec' in metrics
  assert int(state.step) == 3


@pytest.mark.slow
def test_identity_mapping_term_is_off_by_default_and_adds_its_weighted_l1_when_on():
  """camstyle.lambda_idt adds lambda * |G(x, own camera) - x| to G's loss; 0 keeps StarGAN's."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  for lam in (0.0, 2.5):
    config = _config(lambda_idt=lam, n_critic=1)
    total, _, decay = train.iterations(config.camstyle, 16)
    step = train.make_train_step(config, L, total, decay, mesh)
    state = parallel.replicate(train.init_state(config, L), mesh)
    batch = _batch(config)
    state, _ = step.d_step(state, parallel.shard_batch(batch, mesh))
    g, _ = stargan.build(config.camstyle, L)
    x = batch['image'].astype(np.float32) / 127.5 - 1
    own = np.asarray(jax.jit(g.apply)({'params': state.g_params}, x,
                                      jax.nn.one_hot(batch['camid'], L)))
    _, m = step.g_step(state, parallel.shard_batch(batch, mesh))
    c = config.camstyle
    paper = float(m['g_fake']) + c.lambda_rec * float(m['g_rec']) + c.lambda_cls * float(m['g_cls'])
    if lam == 0:
      assert 'g_idt' not in m
      np.testing.assert_allclose(float(m['g_loss']), paper, rtol=1e-5)
    else:
      np.testing.assert_allclose(float(m['g_idt']), np.mean(np.abs(x - own)), rtol=1e-4)
      np.testing.assert_allclose(float(m['g_loss']), paper + lam * float(m['g_idt']), rtol=1e-5)


def test_learning_rate_is_constant_then_linear_to_zero():
  lrs = [float(train.learning_rate(1e-4, s, total=10, decay=4)) for s in range(10)]
  np.testing.assert_allclose(lrs, [1e-4] * 7 + [0.75e-4, 0.5e-4, 0.25e-4], rtol=1e-6)
  c = _config().camstyle
  assert train.iterations(c, num_images=20) == (4 * 2, 2, 4)   # 20 // 8 = 2 per epoch
  c.num_iters = 30
  assert train.iterations(c, num_images=20) == (30, 2, 15)     # the same decay fraction


@pytest.mark.slow
def test_a_step_gives_the_same_result_on_one_and_eight_devices(step8):
  config, mesh8, step8 = step8
  mesh1 = parallel.make_mesh(jax.devices()[:1])
  total, _, decay = train.iterations(config.camstyle, len(_NoIdentities()))
  runs = []
  for mesh, step in ((mesh1, train.make_train_step(config, L, total, decay, mesh1)),
                     (mesh8, step8)):
    state = parallel.replicate(train.init_state(config, L), mesh)
    metrics = []
    for it in range(4):  # D, D + G, D, D + G
      state, m = step(state, parallel.shard_batch(_batch(config, seed=it), mesh), it)
      metrics.append({k: float(v) for k, v in m.items()})
    runs.append((metrics, jax.tree.map(np.asarray, (state.g_params, state.d_params))))
  assert mesh8.devices.size == 8
  (m1, p1), (m8, p8) = runs
  for a, b in zip(m1, m8):
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=2e-4, atol=1e-6)
  # Adam turns float-rounding-sized gradient differences of near-zero gradients into differences
  # of up to lr per step; anything beyond a few steps of lr would be a real difference.
  lr, diffs = config.camstyle.d_lr, []
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, atol=4 * 2 * lr)
    diffs.append(np.abs(a - b).ravel())
  assert np.mean(np.concatenate(diffs) < 1e-6) > 0.95


def test_batches_depend_on_seed_and_iteration_only_not_on_the_mesh():
  c = _config().camstyle
  a = pipeline.camstyle_plan(seed=0, step=5, num_images=16, camstyle_config=c)
  b = pipeline.camstyle_plan(seed=0, step=5, num_images=16, camstyle_config=c)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  epoch = np.concatenate([pipeline.camstyle_plan(0, s, 16, c)['index'] for s in (4, 5)])
  assert sorted(epoch) == list(range(16))  # an epoch visits every image once
  split = _NoIdentities()
  got = []
  for mesh, threads in ((parallel.make_mesh(), 2), (parallel.make_mesh(jax.devices()[:1]), 0)):
    got.append([jax.tree.map(np.asarray, batch) for _, batch in pipeline.camstyle_batches(
        split.image, split.camids, L, c, seed=0, start=4, stop=6, mesh=mesh, threads=threads)])
  batch = got[0][1]
  assert batch['image'].shape == (8, c.height, c.width, 3) and batch['image'].dtype == np.uint8
  np.testing.assert_array_equal(batch['camid'], split.camids[a['index']])
  np.testing.assert_array_equal(batch['target'], a['target'] % L)
  for x, y in zip(got[0], got[1]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  # Row j is image a['index'][j] resized to the load size, cropped at the plan's offsets, flipped.
  j = 3
  loaded = np.asarray(Image.fromarray(split.image(a['index'][j])).resize(
      (c.load_width, c.load_height), Image.BILINEAR))
  t, l = a['top'][j], a['left'][j]
  want = loaded[t:t + c.height, l:l + c.width]
  np.testing.assert_array_equal(batch['image'][j], want[:, ::-1] if a['flip'][j] else want)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_final_state(tmp_path, monkeypatch):
  config = _config()
  mesh = parallel.make_mesh()
  whole = train.train(config, _NoIdentities(), tmp_path / 'whole', mesh)
  assert whole['iters'] == whole['total_iters'] == 8

  real_call = train.TrainStep.__call__

  def dying(self, state, batch, iteration):
    if iteration == 5:
      raise KeyboardInterrupt  # killed after iteration 5 of 8; the last checkpoint is at 4
    return real_call(self, state, batch, iteration)

  monkeypatch.setattr(train.TrainStep, '__call__', dying)
  with pytest.raises(KeyboardInterrupt):
    train.train(config, _NoIdentities(), tmp_path / 'resumed', mesh)
  monkeypatch.setattr(train.TrainStep, '__call__', real_call)
  resumed = train.train(config, _NoIdentities(), tmp_path / 'resumed', mesh)
  assert resumed['iters'] == 8
  a = train.restore_or_init(config, L, _checkpointer(tmp_path / 'whole'), mesh)
  b = train.restore_or_init(config, L, _checkpointer(tmp_path / 'resumed'), mesh)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # A finished training asked again does nothing more.
  assert train.train(config, _NoIdentities(), tmp_path / 'whole', mesh)['iters'] == 8

  grid = np.asarray(Image.open(tmp_path / 'whole' / 'samples' / 'step_0000008.png'))
  c = config.camstyle
  assert grid.shape[0] == 3 * c.height + 2 * 2  # sample_images rows with 2-pixel gaps
  assert grid.shape[1] == (L + 1) * c.width + (L + 1) * 2  # real + L fakes, wider first gap


def _checkpointer(root):
  from jaxreid import checkpoint
  return checkpoint.Checkpointer(root / 'checkpoints')


def test_bad_settings_are_refused_in_one_line():
  c = _config().camstyle
  for key, value, match in (('batch_size', 64, 'at most the 16 training images'),
                            ('load_height', 10, 'at least the crop size'),
                            ('fake_format', 'gif', "expected 'jpeg' or 'png'"),
                            ('decay_epochs', 9, 'at most config.camstyle.num_epochs'),
                            ('lambda_idt', -1.0, 'lambda_idt=-1.0: expected a non-negative weight')):
    bad = _config(**{key: value}).camstyle
    with pytest.raises(ConfigError, match=match) as e:
      train.check_config(bad, L, 16)
    assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match='at least 2 cameras'):
    train.check_config(c, 1, 16)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    train.train(_config(batch_size=4), _NoIdentities(), '/nonexistent/never/written',
                parallel.make_mesh())
