"""config.camstyle.conv: every mode computes the native StarGAN, gradient penalty included."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreid import configlib, parallel
from jaxreid.camstyle import stargan, train
from jaxreid.configlib import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
L = 3


def _random_params(module, seed, *args):
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: (0.2 * rng.standard_normal(l.shape) +
                                 (1.0 if len(l.shape) == 1 else 0.0)).astype(np.float32), shapes)


def _assert_trees_close(got, want, what):
  # One scale per tree: some entries are zero up to rounding, a per-entry relative bound
  # would compare noise.
  scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(want))
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=2e-5,
                               err_msg=f'{what} {jax.tree_util.keystr(path)}')


def _discriminator_functions(d):
  """(loss, outputs) with the parameters' loss gradient, and the WGAN-GP term with its gradient."""

  def loss(params, x):
    src, cls = d.apply({'params': params}, x)
    return jnp.sum(src * jnp.arange(src.size).reshape(src.shape) / src.size) + jnp.sum(cls ** 2), \
        (src, cls)

  def gp(params, x):
    # As train.d_loss_fn: the norm of D's input gradient, differentiated w.r.t. D's parameters.
    g = jax.grad(lambda x: d.apply({'params': params}, x)[0].sum())(x)
    return jnp.mean((jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2, 3)) + 1e-12) - 1.0) ** 2)

  return jax.jit(jax.value_and_grad(loss, has_aux=True)), jax.jit(jax.value_and_grad(gp))


def test_discriminator_outputs_gradients_and_gradient_penalty_equal_the_native_ones():
  h, w = 36, 20   # maps 18x10, 9x5 (odd sizes on the way down), then 4x2 as at 256x128
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, h, w, 3)), jnp.float32)
  nets = {m: stargan.Discriminator(L, (h, w), conv_dim=4, repeat_num=3, conv=m)
          for m in ('native', 'auto')}
  params = _random_params(nets['native'], 1, x)
  assert jax.tree.map(jnp.shape, _random_params(nets['auto'], 1, x)) == \
      jax.tree.map(jnp.shape, params)
  loss, gp = _discriminator_functions(nets['native'])
  ((want, (src, cls)), grads), (want_gp, gp_grads) = loss(params, x), gp(params, x)
  loss, gp = _discriminator_functions(nets['auto'])
  ((got, (s, c)), g), (got_gp, pg) = loss(params, x), gp(params, x)
  np.testing.assert_allclose(s, src, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, cls, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  _assert_trees_close(g, grads, 'gradient')
  np.testing.assert_allclose(got_gp, want_gp, rtol=1e-5)
  _assert_trees_close(pg, gp_grads, 'gradient-penalty gradient')


def test_auto_runs_the_twice_differentiated_discriminator_as_matmuls_on_cpu_only(monkeypatch):
  assert stargan.discriminator_conv_mode('auto') == 'matmul'
  # Inside the G update (first derivatives only) D picks per layer, as the generator does.
  assert stargan.discriminator_conv_mode('auto', second_order=False) == 'auto'
  assert stargan.discriminator_conv_mode('native') == 'native'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert stargan.discriminator_conv_mode('auto') == 'native'
  assert stargan.discriminator_conv_mode('matmul') == 'matmul'


@pytest.mark.slow
def test_generator_outputs_and_gradients_equal_the_native_ones():
  h, w = 20, 12
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, h, w, 3)), jnp.float32)
  onehot = jnp.eye(L)[jnp.array([0, 2])]
  nets = {m: stargan.Generator(L, conv_dim=4, repeat_num=1, conv=m) for m in ('native', 'matmul')}
  params = _random_params(nets['native'], 3, x, onehot)

  def run(g):
    def loss(p):
      out = g.apply({'params': p}, x, onehot)
      return jnp.sum(out * jnp.linspace(-1, 1, w)[:, None]), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (_, want), want_grads = run(nets['native'])
  (_, got), got_grads = run(nets['matmul'])   # every layer: 7x7, strided 4x4, 3x3, transposed
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  _assert_trees_close(got_grads, want_grads, 'gradient')


def _tiny_config(conv):
  c = configlib.load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config()
  cs = c.camstyle
  cs.height, cs.width, cs.load_height, cs.load_width = 32, 16, 32, 16
  cs.g_conv_dim, cs.g_repeat_num, cs.d_conv_dim, cs.d_repeat_num = 4, 1, 4, 3
  cs.batch_size, cs.conv = 4, conv
  return c


@pytest.mark.slow
def test_train_iteration_under_auto_equals_the_native_one():
  mesh = parallel.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(4)
  batch = parallel.shard_batch({'image': rng.integers(0, 256, (4, 32, 16, 3), dtype=np.uint8),
                                'camid': np.array([0, 1, 2, 0], np.int32),
                                'target': np.array([1, 2, 0, 2], np.int32)}, mesh)
  metrics = {}
  for m in ('native', 'auto'):
    c = _tiny_config(m)
    state = train.init_state(c, L)
    step = train.make_train_step(c, L, 100, 0, mesh)
    metrics[m] = []
    for i in range(2):   # the second iteration sees both updates of the first
      state, got = step(state, batch, i)
      metrics[m].append(jax.device_get(got))
  # Adam's first steps move a weight by about lr whatever its gradient's size, so a gradient that
  # is zero up to rounding may move either way: the second iteration gets a looser bound.
  for i, rtol in enumerate((1e-4, 1e-3)):
    for k, want in metrics['native'][i].items():
      np.testing.assert_allclose(metrics['auto'][i][k], want, rtol=rtol, atol=1e-5,
                                 err_msg=f'iteration {i} {k}')


def test_unknown_camstyle_conv_is_one_line_naming_the_key():
  g, d = stargan.build(_tiny_config('matmul').camstyle, L)
  assert g.conv == d.conv == 'matmul'
  c = _tiny_config('fast')
  with pytest.raises(ValueError) as e:
    stargan.build(c.camstyle, L)
  msg = str(e.value)
  assert msg.startswith("config.camstyle.conv='fast': expected one of") and '\n' not in msg
  with pytest.raises(ConfigError, match=r"config\.camstyle\.conv='fast'"):
    train.check_config(c.camstyle, num_cameras=L, num_images=100)
