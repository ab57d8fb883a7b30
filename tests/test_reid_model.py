"""The network: torchvision-sized backbones, the BUC head's two outputs, host init, conv swap."""

import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreid import configlib
from jaxreid.reid import model, resnet

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


def model_config(**kw):
  c = common.get_config().model
  c.arch, c.embedding_dim = 'tiny', 16
  for k, v in kw.items():
    c[k] = v
  return c


def count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('arch,params,dim', [
    # torchvision parameter counts minus the 1000-way fc layer.
    ('resnet18', 11_689_512 - 513_000, 512),
    ('resnet34', 21_797_672 - 513_000, 512),
    ('resnet50', 25_557_032 - 2_049_000, 2048),
])
def test_backbone_sizes_match_torchvision(arch, params, dim):
  net = resnet.ResNet(arch)
  v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 32, 3)))
  assert count(v['params']) == params
  assert resnet.feature_dim(arch) == dim
  out = jax.eval_shape(net.apply, v, jnp.zeros((2, 256, 128, 3)))
  assert out.shape == (2, dim)


def test_last_stride_one_doubles_the_last_map():
  for stride, hw in ((2, (8, 4)), (1, (16, 8))):
    net = resnet.ResNet('resnet18', last_stride=stride)
    v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 256, 128, 3)))
    _, state = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((1, 256, 128, 3)),
                                                  capture_intermediates=True,
                                                  mutable=['intermediates']), v)
    assert state['intermediates']['layer4_1']['__call__'][0].shape[1:3] == hw


@pytest.mark.slow
def test_init_follows_torchvision_and_buc_rules_and_the_key():
  net = model.build_model(model_config(embedding_dim=256))
  v = model.init_variables(net, jax.random.key(3), 64, 32)
  k = v['params']['backbone']['layer4_0']['conv2']['kernel']      # (3, 3, 128, 128)
  assert np.std(k) == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.03)
  assert abs(np.mean(k)) < 0.002
  e = v['params']['embed']['kernel']                               # (128, 256): fan_out 256
  assert np.std(e) == pytest.approx(math.sqrt(2 / 256), rel=0.03)
  assert not np.any(v['params']['embed']['bias'])
  bn = v['params']['backbone']['bn1']
  assert np.all(bn['scale'] == 1) and not np.any(bn['bias'])
  stats = v['batch_stats']['embed_bn']
  assert np.all(stats['var'] == 1) and not np.any(stats['mean'])
  again = model.init_variables(net, jax.random.key(3), 64, 32)
  other = model.init_variables(net, jax.random.key(4), 64, 32)
  np.testing.assert_array_equal(again['params']['embed']['kernel'], e)
  assert not np.allclose(other['params']['embed']['kernel'], e)
  # It is the modules' own initialisers: un-jitted net.init draws the same values (the jitted one
  # is compiled at a low XLA optimisation level, so the last bits of the normal transform differ).
  eager = net.init(jax.random.key(3), jnp.zeros((1, 64, 32, 3)), train=False)
  assert jax.tree.structure(dict(eager)) == jax.tree.structure(v)
  for a, b in zip(jax.tree.leaves(dict(eager)), jax.tree.leaves(v)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class PatchConv(nn.Module):
  """A stand-in for a swapped convolution: patches + matmul, same parameter name and shape."""
  features: int
  kernel_size: tuple
  strides: tuple = (1, 1)
  padding: object = 'SAME'
  use_bias: bool = False
  kernel_init: object = nn.initializers.lecun_normal()
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features))
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), self.strides, self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    # Patch features come ordered (channel, kh, kw).
    w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features)
    return patches @ w


def test_outputs_feature_and_embedding_and_conv_is_swappable():
  cfg = model_config()
  net = model.build_model(cfg)
  v = model.init_variables(net, jax.random.key(0), 32, 16)
  x = jax.random.normal(jax.random.key(1), (4, 32, 16, 3))
  out, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)},
                                            mutable=['batch_stats']))(v, x)
  assert out['feature'].shape == (4, 128) and out['embedding'].shape == (4, 16)
  np.testing.assert_allclose(np.linalg.norm(out['feature'], axis=1), 1.0, rtol=1e-5)
  # Dropout comes after the normalisation: kept entries are the unit embedding / (1 - p).
  no_drop = model.build_model(model_config(dropout=0.0))
  clean, _ = jax.jit(lambda v, x: no_drop.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  np.testing.assert_allclose(np.linalg.norm(clean['embedding'], axis=1), 1.0, rtol=1e-5)
  e = np.asarray(out['embedding'])
  kept = e != 0
  assert 0.2 < kept.mean() < 0.8
  np.testing.assert_allclose(e[kept], 2 * np.asarray(clean['embedding'])[kept], rtol=1e-5)
  # Eval: no dropout, running statistics, unit-length embedding.
  ev = jax.jit(net.apply)(upd | {'params': v['params']}, x)
  np.testing.assert_allclose(np.linalg.norm(ev['embedding'], axis=1), 1.0, rtol=1e-5)

  swapped = model.build_model(cfg, conv=PatchConv)
  assert jax.tree.structure(jax.eval_shape(swapped.init, jax.random.key(0), x)) == \
      jax.tree.structure(jax.eval_shape(net.init, jax.random.key(0), x))
  sw = jax.jit(swapped.apply)(upd | {'params': v['params']}, x)
  np.testing.assert_allclose(np.asarray(sw['feature']), np.asarray(ev['feature']), atol=1e-5)


@pytest.mark.parametrize('field,value,expected', [
    ('arch', 'resnet101', "config.model.arch='resnet101': expected one of"),
    ('dtype', 'float16', "config.model.dtype='float16': expected one of"),
    ('last_stride', 3, 'config.model.last_stride=3: expected 1 or 2'),
    ('dropout', 1.0, 'config.model.dropout=1.0: expected a value in [0, 1)'),
])
def test_bad_model_config_is_one_line_naming_the_key(field, value, expected):
  with pytest.raises(ValueError) as e:
    model.build_model(model_config(**{field: value}))
  assert str(e.value).startswith(expected) and '\n' not in str(e.value)
