"""The StarGAN networks: the reference architecture, and the same function as a PyTorch StarGAN."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

torch.set_num_threads(1)  # the references are tiny; threads only contend on a shared machine

from jaxreid.camstyle import stargan
from jaxreid.configlib import ConfigError, load_sibling

REPO = pathlib.Path(__file__).resolve().parents[1]

L = 6


def _shapes(module, *args):
  variables = jax.eval_shape(module.init, jax.random.key(0), *args)
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])}


def test_generator_matches_reference_architecture_at_default_widths():
  shapes = _shapes(stargan.Generator(L), jnp.zeros((1, 256, 128, 3)), jnp.zeros((1, L)))
  kernels = {k: v for k, v in shapes.items() if k.endswith('kernel')}
  # HHL's StarGAN (docs/method.md): 7x7 (64), two 4x4 down (128, 256), 6 residual blocks of two 3x3 at 256, two 4x4
  # up (128, 64), 7x7 -> 3; input RGB + one-hot camera map.
  expected = {'conv_in/kernel': (7, 7, 3 + L, 64), 'down0/kernel': (4, 4, 64, 128),
              'down1/kernel': (4, 4, 128, 256), 'up0/kernel': (4, 4, 256, 128),
              'up1/kernel': (4, 4, 128, 64), 'conv_out/kernel': (7, 7, 64, 3)}
  for r in range(6):
    for j in (1, 2):
      expected[f'res{r}/conv{j}/kernel'] = (3, 3, 256, 256)
  assert kernels == expected
  # No conv biases; every conv but the last is followed by an affine InstanceNorm.
  norms = {k: v for k, v in shapes.items() if not k.endswith('kernel')}
  assert all(k.endswith(('norm_in/scale', 'norm_in/bias', '_norm/scale', '_norm/bias',
                         'norm1/scale', 'norm1/bias', 'norm2/scale', 'norm2/bias'))
             for k in norms)
  assert len(norms) == 2 * (len(kernels) - 1)


def test_discriminator_matches_reference_architecture_at_default_widths():
  shapes = _shapes(stargan.Discriminator(L, (256, 128)), jnp.zeros((1, 256, 128, 3)))
  widths = [3, 64, 128, 256, 512, 1024, 2048]
  expected = {}
  for i in range(6):
    expected[f'conv{i}/kernel'] = (4, 4, widths[i], widths[i + 1])
    expected[f'conv{i}/bias'] = (widths[i + 1],)
  expected['src/kernel'] = (3, 3, 2048, 1)
  expected['cls/kernel'] = (4, 2, 2048, L)  # (H/64, W/64): no bias on either head
  assert shapes == expected
  src, cls = jax.eval_shape(stargan.Discriminator(L, (256, 128)).init_with_output,
                            jax.random.key(0), jnp.zeros((2, 256, 128, 3)))[0]
  assert src.shape == (2, 4, 2, 1) and cls.shape == (2, L)


def test_too_deep_discriminator_is_refused_in_one_line():
  with pytest.raises(ValueError) as e:
    stargan.check_image_size(64, 32, 6)
  assert 'below 1 pixel' in str(e.value) and 'at most 5' in str(e.value) and '\n' not in str(e.value)
  stargan.check_image_size(64, 32, 5)
  c = load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config().camstyle
  c.d_repeat_num = 9
  from jaxreid.camstyle import train
  with pytest.raises(ConfigError, match='config.camstyle.*d_repeat_num=9'):
    train.check_config(c, num_cameras=3, num_images=100)


# ---------------------------------------------------------------- an independent PyTorch StarGAN


class _TorchRes(tnn.Module):

  def __init__(self, d):
    super().__init__()
    self.main = tnn.Sequential(
        tnn.Conv2d(d, d, 3, 1, 1, bias=False), tnn.InstanceNorm2d(d, affine=True), tnn.ReLU(),
        tnn.Conv2d(d, d, 3, 1, 1, bias=False), tnn.InstanceNorm2d(d, affine=True))

  def forward(self, x):
    return x + self.main(x)


def _torch_generator(conv_dim, c_dim, repeat):
  layers = [tnn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
            tnn.InstanceNorm2d(conv_dim, affine=True), tnn.ReLU()]
  d = conv_dim
  for _ in range(2):
    layers += [tnn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), tnn.InstanceNorm2d(2 * d, affine=True),
               tnn.ReLU()]
    d *= 2
  layers += [_TorchRes(d) for _ in range(repeat)]
  for _ in range(2):
    layers += [tnn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False),
               tnn.InstanceNorm2d(d // 2, affine=True), tnn.ReLU()]
    d //= 2
  layers += [tnn.Conv2d(d, 3, 7, 1, 3, bias=False), tnn.Tanh()]
  return tnn.Sequential(*layers)


class _TorchD(tnn.Module):

  def __init__(self, h, w, conv_dim, c_dim, repeat):
    super().__init__()
    layers, d, cin = [], conv_dim, 3
    for _ in range(repeat):
      layers += [tnn.Conv2d(cin, d, 4, 2, 1), tnn.LeakyReLU(0.01)]
      cin, d = d, 2 * d
    self.main = tnn.Sequential(*layers)
    self.src = tnn.Conv2d(cin, 1, 3, 1, 1, bias=False)
    self.cls = tnn.Conv2d(cin, c_dim, (h >> repeat, w >> repeat), bias=False)

  def forward(self, x):
    h = self.main(x)
    return self.src(h), self.cls(h).flatten(1)


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))


def _load_conv(tconv, p, transposed=False):
  k = np.asarray(p['kernel'])
  # flax (kh, kw, in, out) -> torch Conv2d (out, in, kh, kw) / ConvTranspose2d (in, out, kh, kw)
  tconv.weight.data = _t(k.transpose(2, 3, 0, 1) if transposed else k.transpose(3, 2, 0, 1))
  if 'bias' in p:
    tconv.bias.data = _t(p['bias'])


def _load_norm(tnorm, p):
  tnorm.weight.data, tnorm.bias.data = _t(p['scale']), _t(p['bias'])


def _random_params(module, seed, *args):
  """Params of `module` with every leaf random (norm scales / biases too, so they are exercised)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: (0.2 * rng.standard_normal(l.shape) +
                                 (1.0 if len(l.shape) == 1 else 0.0)).astype(np.float32), shapes)


def test_generator_computes_what_the_pytorch_stargan_computes():
  conv_dim, repeat, h, w = 4, 2, 20, 12
  g = stargan.Generator(L, conv_dim, repeat)
  x = np.random.default_rng(0).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
  onehot = np.eye(L, dtype=np.float32)[[1, 4]]
  params = _random_params(g, 1, x, onehot)
  out = np.asarray(jax.jit(g.apply)({'params': params}, x, onehot))

  tg = _torch_generator(conv_dim, L, repeat)
  m = list(tg)
  _load_conv(m[0], params['conv_in'])
  _load_norm(m[1], params['norm_in'])
  _load_conv(m[3], params['down0'])
  _load_norm(m[4], params['down0_norm'])
  _load_conv(m[6], params['down1'])
  _load_norm(m[7], params['down1_norm'])
  for r in range(repeat):
    blk = m[9 + r].main
    _load_conv(blk[0], params[f'res{r}']['conv1'])
    _load_norm(blk[1], params[f'res{r}']['norm1'])
    _load_conv(blk[3], params[f'res{r}']['conv2'])
    _load_norm(blk[4], params[f'res{r}']['norm2'])
  base = 9 + repeat
  _load_conv(m[base], params['up0'], transposed=True)
  _load_norm(m[base + 1], params['up0_norm'])
  _load_conv(m[base + 3], params['up1'], transposed=True)
  _load_norm(m[base + 4], params['up1_norm'])
  _load_conv(m[base + 6], params['conv_out'])
  tx = torch.cat([_t(x).permute(0, 3, 1, 2),
                  _t(onehot)[:, :, None, None].expand(-1, -1, h, w)], dim=1)
  with torch.no_grad():
    ref = tg(tx).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(out, ref, atol=2e-4)


@pytest.mark.parametrize('size', [(32, 16), (36, 20)])  # (36, 20): odd maps on the way down
def test_discriminator_computes_what_the_pytorch_stargan_computes(size):
  h, w = size
  repeat = 3
  d = stargan.Discriminator(L, (h, w), conv_dim=4, repeat_num=repeat)
  x = np.random.default_rng(1).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
  params = _random_params(d, 2, x)
  src, cls = (np.asarray(a) for a in jax.jit(d.apply)({'params': params}, x))
  td = _TorchD(h, w, 4, L, repeat)
  for i in range(repeat):
    _load_conv(td.main[2 * i], params[f'conv{i}'])
  _load_conv(td.src, params['src'])
  _load_conv(td.cls, params['cls'])
  with torch.no_grad():
    tsrc, tcls = td(_t(x).permute(0, 3, 1, 2))
  np.testing.assert_allclose(src, tsrc.permute(0, 2, 3, 1).numpy(), atol=1e-4)
  np.testing.assert_allclose(cls, tcls.numpy(), atol=1e-4)


def test_input_gradients_match_pytorch_for_the_gradient_penalty():
  """The GP differentiates D w.r.t. its input: our stride-1 rewrite must give torch's gradient."""
  h, w = 16, 8
  d = stargan.Discriminator(L, (h, w), conv_dim=4, repeat_num=2)
  x = np.random.default_rng(2).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
  params = _random_params(d, 3, x)
  grad = np.asarray(jax.jit(jax.grad(lambda x: d.apply({'params': params}, x)[0].sum()))(x))
  td = _TorchD(h, w, 4, L, 2)
  for i in range(2):
    _load_conv(td.main[2 * i], params[f'conv{i}'])
  _load_conv(td.src, params['src'])
  _load_conv(td.cls, params['cls'])
  tx = _t(x).permute(0, 3, 1, 2).requires_grad_(True)
  td(tx)[0].sum().backward()
  np.testing.assert_allclose(grad, tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)
