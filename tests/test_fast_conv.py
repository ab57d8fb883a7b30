"""The matmul convolution: same parameters, outputs and gradients as the native one; 'auto'."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreid import configlib
from jaxreid.reid import fast_conv, model

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


def native(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize('hw,cin,cout,k,stride', [
    ((20, 11), 3, 8, 7, 2),      # stem: 7x7 stride 2, padding 3 (odd width)
    ((9, 6), 5, 6, 3, 1),        # 3x3 stride 1, padding 1
    ((9, 6), 5, 6, 3, 2),        # 3x3 stride 2 (first block of a stage)
    ((4, 2), 8, 8, 3, 1),        # the tiny last-stage maps the fast path is for
    ((7, 5), 6, 12, 1, 1),       # 1x1 bottleneck
    ((7, 5), 6, 12, 1, 2),       # 1x1 stride-2 downsample (odd sizes)
])
def test_matmul_conv_matches_native_outputs_and_gradients(hw, cin, cout, k, stride):
  rng = np.random.default_rng(k * 10 + stride)
  x = jnp.asarray(rng.normal(size=(3, *hw, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
  pad = ((k // 2, k // 2),) * 2
  cot = None

  def loss(f):
    return lambda x, w: jnp.sum(f(x, w, (stride, stride), pad) * cot)

  want = native(x, w, (stride, stride), pad)
  got = jax.jit(fast_conv.matmul_conv, static_argnums=(2, 3))(x, w, (stride, stride), pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  cot = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  gx, gw = jax.grad(loss(fast_conv.matmul_conv), argnums=(0, 1))(x, w)
  rx, rw = jax.grad(loss(native), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('mode', ['native', 'matmul', 'auto'])
@pytest.mark.parametrize('use_bias', [False, True])
def test_fast_conv_has_flax_conv_parameters_and_outputs(mode, use_bias):
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
  kw = dict(features=6, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
            use_bias=use_bias, bias_init=nn.initializers.normal(1.0))
  ref = nn.Conv(**kw)
  ours = fast_conv.FastConv(mode=mode, **kw)
  v = ref.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, v)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)


def test_auto_uses_matmul_only_on_cpu_for_1x1_and_tiny_maps(monkeypatch):
  small, large = fast_conv.AUTO_MAX_OUTPUT_PIXELS, fast_conv.AUTO_MAX_OUTPUT_PIXELS + 1
  assert fast_conv.use_matmul('auto', small) and not fast_conv.use_matmul('auto', large)
  assert fast_conv.use_matmul('auto', 10_000, pointwise=True)
  assert fast_conv.use_matmul('matmul', 10_000) and not fast_conv.use_matmul('native', 1)
  assert fast_conv.output_pixels((256, 128), (7, 7), (2, 2), ((3, 3), (3, 3))) == 128 * 64
  assert fast_conv.output_pixels((7, 5), (1, 1), (2, 2), ((0, 0), (0, 0))) == 4 * 3
  # Accelerators keep the native convolution everywhere under 'auto'.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert not fast_conv.use_matmul('auto', 1) and not fast_conv.use_matmul('auto', 1, True)
  assert fast_conv.use_matmul('matmul', 1)
  assert fast_conv.conv_module('native') is nn.Conv


def model_config(conv):
  c = common.get_config().model
  c.arch, c.embedding_dim, c.dropout, c.conv = 'tiny', 16, 0.0, conv
  return c


@pytest.mark.slow
def test_network_under_each_mode_equals_the_native_one_with_the_same_weights():
  x = jax.random.normal(jax.random.key(1), (4, 64, 32, 3))   # last stage: 2x1 maps
  nets = {m: model.build_model(model_config(m)) for m in fast_conv.CONV_MODES}
  v = model.init_variables(nets['native'], jax.random.key(0), 64, 32)
  for m, net in nets.items():
    assert jax.tree.structure(model.init_variables(net, jax.random.key(0), 64, 32)) == \
        jax.tree.structure(v), m

  def loss(net):
    def f(params):
      out, _ = net.apply({'params': params, 'batch_stats': v['batch_stats']}, x, train=True,
                         mutable=['batch_stats'])
      return jnp.sum(out['embedding'] * jnp.arange(16.0)), out['feature']
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (want, feat), grads = loss(nets['native'])(v['params'])
  for m in ('auto', 'matmul'):
    (got, f), g = loss(nets[m])(v['params'])
    np.testing.assert_allclose(f, feat, rtol=1e-4, atol=1e-5, err_msg=m)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=m)
    # One scale for all leaves: some gradients are zero up to rounding (the head's bias feeds a
    # BatchNorm, which removes it), so a per-leaf relative comparison would compare noise.
    scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(grads))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g)[0], jax.tree.leaves(grads)):
      np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-4,
                                 err_msg=f'{m} {jax.tree_util.keystr(path)}')


def test_unknown_conv_mode_is_one_line_naming_the_key():
  with pytest.raises(ValueError) as e:
    model.build_model(model_config('fast'))
  msg = str(e.value)
  assert msg.startswith("config.model.conv='fast': expected one of") and '\n' not in msg


def first_max_pool_reference(x, g, window, strides, padding):
  """Max-pool and its gradient in plain numpy: each window's gradient to its first maximum."""
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, strides, padding
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
  oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  y = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
  gp = np.zeros_like(xp)
  for n in range(x.shape[0]):
    for a in range(oh):
      for b in range(ow):
        for c in range(x.shape[3]):
          win = xp[n, a * sh:a * sh + kh, b * sw:b * sw + kw, c]
          i, j = np.unravel_index(np.argmax(win), win.shape)   # argmax: first maximum
          y[n, a, b, c] = win[i, j]
          gp[n, a * sh + i, b * sw + j, c] += g[n, a, b, c]
  return y, gp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]


@pytest.mark.parametrize('hw,window,strides,pad', [
    ((9, 7), (3, 3), (2, 2), 1),     # the ResNet stem's pool, odd sizes
    ((10, 6), (3, 3), (2, 2), 1),
    ((6, 5), (3, 3), (1, 1), 1),     # overlapping windows, stride 1
    ((8, 6), (2, 2), (2, 2), 0),     # non-overlapping, no padding
])
def test_slice_max_pool_equals_native_outputs_and_gradients_with_ties(hw, window, strides, pad):
  rng = np.random.default_rng(hw[0] * 10 + strides[0])
  # ReLU output rounded to halves: most windows hold tied maxima (zeros, or equal values).
  x = np.round(np.maximum(rng.normal(size=(2, *hw, 3)), 0) * 2).astype(np.float32) / 2
  padding = ((pad, pad), (pad, pad))
  native_pool = lambda x: nn.max_pool(x, window, strides, padding)
  want, native_vjp = jax.vjp(native_pool, jnp.asarray(x))
  g = rng.normal(size=want.shape).astype(np.float32)
  got, vjp = jax.vjp(jax.jit(fast_conv.slice_max_pool, static_argnums=(1, 2, 3)),
                     jnp.asarray(x), window, strides, padding)
  ref_y, ref_g = first_max_pool_reference(x, g, window, strides, padding)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, ref_y)
  # Bit for bit: the same first-maximum routing and the same order of summing overlaps.
  np.testing.assert_array_equal(vjp(g)[0], native_vjp(g)[0])
  np.testing.assert_allclose(vjp(g)[0], ref_g, rtol=1e-6, atol=1e-6)
  # The 'native' mode's pool (padded before a VALID flax pool) is flax's padded pool, bit for bit.
  got, vjp = jax.vjp(lambda x: fast_conv.max_pool('native', x, window, strides, padding),
                     jnp.asarray(x))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(vjp(g)[0], native_vjp(g)[0])


def test_max_pool_follows_the_conv_mode(monkeypatch):
  def grad_ops(mode):
    f = jax.grad(lambda x: jnp.sum(fast_conv.max_pool(mode, x, (3, 3), (2, 2), ((1, 1),) * 2)))
    return str(jax.make_jaxpr(f)(jnp.ones((1, 6, 4, 2))))
  assert 'select_and_scatter' not in grad_ops('auto') + grad_ops('matmul')
  assert 'select_and_scatter' in grad_ops('native')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert 'select_and_scatter' in grad_ops('auto')
  assert fast_conv.conv_mode(fast_conv.conv_module('auto')) == 'auto'
  assert fast_conv.conv_mode(fast_conv.conv_module('matmul')) == 'matmul'
  assert fast_conv.conv_mode(nn.Conv) == 'native'
  with pytest.raises(ValueError, match=r"^config.model.conv='fast': expected one of"):
    fast_conv.max_pool('fast', jnp.ones((1, 4, 4, 1)), (3, 3), (2, 2), ((1, 1),) * 2)
