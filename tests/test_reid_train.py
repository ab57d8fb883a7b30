"""Optimiser, schedule, state resets, non-finite stop and device-count invariance of training."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreid import configlib, parallel
from jaxreid.reid import train

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


def small_config(**train_overrides):
  c = common.get_config()
  c.model.arch = 'tiny'
  c.model.embedding_dim = 16
  c.data.height, c.data.width = 32, 16
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def toy_params(rng):
  return {'backbone': {'conv': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
                       'bn': {'scale': rng.normal(size=4).astype(np.float32)}},
          'embed': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                    'bias': rng.normal(size=3).astype(np.float32)}}


def test_sgd_matches_torch_sgd_with_param_groups_and_lr_change():
  torch = pytest.importorskip('torch')
  cfg = small_config()
  rng = np.random.default_rng(0)
  params = toy_params(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(8)]
  lrs = [0.1] * 5 + [0.01] * 3

  leaves, treedef = jax.tree.flatten(params)
  paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  tensors = [torch.nn.Parameter(torch.tensor(v)) for v in leaves]
  backbone = [t for t, p in zip(tensors, paths) if 'backbone' in p]
  head = [t for t, p in zip(tensors, paths) if 'backbone' not in p]
  opt = torch.optim.SGD([{'params': backbone, 'lr_mult': 0.1}, {'params': head, 'lr_mult': 1.0}],
                        lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)

  tx = train.make_optimizer(cfg.train)
  state = tx.init(params)
  ours = params
  for g, lr in zip(grads, lrs):
    for group in opt.param_groups:      # BUC's adjust_lr
      group['lr'] = lr * group['lr_mult']
    for t, gv in zip(tensors, jax.tree.leaves(g)):
      t.grad = torch.tensor(gv)
    opt.step()
    state = state._replace(hyperparams={**state.hyperparams, 'learning_rate': jnp.float32(lr)})
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)
  for t, v, p in zip(tensors, jax.tree.leaves(ours), paths):
    np.testing.assert_allclose(np.asarray(v), t.detach().numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=p)


def test_learning_rate_schedule_of_reference():
  c = common.get_config().train
  assert [train.learning_rate(c, 0, e) for e in (0, 14, 15, 19)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01])
  assert [train.learning_rate(c, s, e) for s, e in ((1, 0), (7, 1))] == [0.01, 0.01]
  assert (train.epochs_for(c, 0), train.epochs_for(c, 3)) == (20, 2)


def toy_state(mesh, num_classes=5, lr=0.1):
  cfg = small_config()
  params = toy_params(np.random.default_rng(1))
  tx = train.make_optimizer(cfg.train, lr)
  _, opt_state = tx.update(params, tx.init(params), params)   # non-zero momentum
  return parallel.replicate(train.TrainState(
      params=params, batch_stats={}, opt_state=opt_state,
      table=jnp.ones((num_classes, 16)), step=jnp.int32(7), rng=jnp.zeros(2, jnp.uint32)),
      mesh), cfg


def test_reset_for_new_labels_zeroes_table_at_new_size_and_restarts_optimiser():
  mesh = parallel.make_mesh()
  state, cfg = toy_state(mesh)
  new = train.reset_for_new_labels(state, 3, cfg, lr=0.01)
  assert new.table.shape == (3, 16) and not np.any(np.asarray(new.table))
  fresh = train.make_optimizer(cfg.train, 0.01).init(state.params)
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(new.opt_state.hyperparams['learning_rate']) == pytest.approx(0.01)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(new.step) == 7
  assert new.table.sharding.is_fully_replicated
  with pytest.raises(ValueError, match='num_classes=0'):
    train.reset_for_new_labels(state, 0, cfg, lr=0.01)


def test_non_finite_loss_stops_with_step_and_last_finite_metrics():
  mesh = parallel.make_mesh()
  state, _ = toy_state(mesh)
  losses = [2.5, 2.25, float('nan'), 1.0]

  def fake_step(s, batch):
    return s.replace(step=s.step + 1), {'loss': jnp.float32(losses[batch]),
                                        'accuracy': jnp.float32(0.5)}

  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_epoch(fake_step, state, range(4), lr=0.1)
  msg = str(e.value)
  assert '\n' not in msg
  assert re.search(r'nan at train step 9\b', msg), msg     # the state was at step 7
  assert 'last finite metrics at step 8: accuracy=0.5, loss=2.25' in msg


def random_batches(num, batch_size, num_classes, height, width, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8),
           'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}
          for _ in range(num)]


def run_steps(step, state_host, mesh, batches, lr):
  state = parallel.replicate(state_host, mesh)   # a fresh copy: the step donates its input
  state = train.with_learning_rate(state, lr)
  losses = []
  for b in batches:
    state, m = step(state, parallel.shard_batch(b, mesh))
    losses.append(m['loss'])
  return jax.device_get(state), np.asarray(jax.device_get(losses))


def rel_diff(a, b):
  """||a - b|| / ||b|| over all leaves of two pytrees."""
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]).astype(np.float64)
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)]).astype(np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _nudged(tree, seed=0):
  """Every float32 leaf moved by one unit in the last place, up or down at random."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: np.asarray(x).astype(np.float64) * (1 + 2.0 ** -23 * rng.choice([-1, 1], np.shape(x)))
      if np.asarray(x).dtype == np.float32 else x, tree)


@pytest.mark.slow
def test_same_seed_same_result_on_one_and_eight_devices():
  """Global-batch math: BatchNorm statistics, loss mean and table update do not see the devices.

  1 and 8 devices differ only in the order of float32 reductions, and training at the paper's
  step-0 lr amplifies any rounding-sized difference. So the tolerance is measured rather than
  chosen: the same steps on one device from weights moved by one float32 rounding each give the
  spread that rounding alone causes, and 8 devices must stay within a few times that. A real
  difference (per-device BatchNorm statistics or loss mean) is orders of magnitude larger.
  """
  cfg = small_config()
  one = parallel.make_mesh(jax.devices()[:1])
  eight = parallel.make_mesh(jax.devices()[:8])
  state = jax.device_get(train.create_train_state(cfg, 6, jax.random.key(0), one))
  batches = random_batches(3, 16, 6, cfg.data.height, cfg.data.width)
  lr = cfg.train.step0_lr
  step1, step8 = train.make_train_step(cfg, one), train.make_train_step(cfg, eight)
  s1, l1 = run_steps(step1, state, one, batches, lr)
  s8, l8 = run_steps(step8, state, eight, batches, lr)
  nudged = state.replace(params=jax.tree.map(lambda x: x.astype(np.float32), _nudged(state.params)))
  sn, ln = run_steps(step1, nudged, one, batches, lr)
  assert np.all(np.isfinite(l1)) and np.any(s1.table) and int(s1.step) == int(s8.step) == 3
  spreads = {}
  for name in ('params', 'batch_stats', 'table', 'opt_state'):
    spread = rel_diff(getattr(sn, name), getattr(s1, name))
    spreads[name] = (rel_diff(getattr(s8, name), getattr(s1, name)), spread)
  spreads['loss'] = (float(np.max(np.abs(l8 - l1) / l1)), float(np.max(np.abs(ln - l1) / l1)))
  for name, (devices, rounding) in spreads.items():
    assert devices <= 4 * rounding + 1e-7, (name, spreads)
  # Training moved the weights far more than the devices did.
  assert rel_diff(s1.params, state.params) > 1e3 * spreads['params'][0], spreads


def test_state_round_trips_through_the_run_checkpointer_with_its_learning_rate(tmp_path):
  from jaxreid import checkpoint
  mesh = parallel.make_mesh()
  state, _ = toy_state(mesh, lr=0.01)
  state = train.with_learning_rate(state, 0.001)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, state, {'merge_step': 1})
  restored = ckpt.restore(state)
  ckpt.close()
  assert float(restored.opt_state.hyperparams['learning_rate']) == pytest.approx(0.001)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                          jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
