"""ResNet-18/34/50 backbones (torchvision layout) and a tiny variant for tests and CPU runs.

Parameter names follow torchvision with '.' between a layer and its block index replaced by '_'
(`layer1.0.conv1.weight` -> `layer1_0/conv1/kernel`), so ImageNet checkpoints map one to one
(see jaxreid.tools.convert_torchvision). The convolution is a module field so that a faster
convolution for small spatial maps can be swapped in without touching the architecture.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxreid.reid import fast_conv
from jaxreid.reid.pooling import global_pool

ModuleDef = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), a plain (untruncated) normal.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# (block kind, blocks per stage, stage widths, stem width)
ARCHS = {
    'tiny': ('basic', (1, 1, 1, 1), (16, 32, 64, 128), 16),
    'resnet18': ('basic', (2, 2, 2, 2), (64, 128, 256, 512), 64),
    'resnet34': ('basic', (3, 4, 6, 3), (64, 128, 256, 512), 64),
    'resnet50': ('bottleneck', (3, 4, 6, 3), (64, 128, 256, 512), 64),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}


def feature_dim(arch: str) -> int:
  """Channels of the pooled backbone output (512 for ResNet-18/34, 2048 for ResNet-50)."""
  kind, _, widths, _ = arch_spec(arch)
  return widths[-1] * EXPANSION[kind]


def arch_spec(arch: str):
  """(block kind, blocks per stage, widths, stem width) of `arch`; one-line error if unknown."""
  if arch not in ARCHS:
    raise ValueError(f'config.model.arch={arch!r}: expected one of {tuple(ARCHS)}')
  return ARCHS[arch]


def _pad(k: int):
  return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  projection: bool

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.planes, (3, 3), (self.strides,) * 2, padding=_pad(3), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), padding=_pad(3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if self.projection:
      x = self.conv(self.planes, (1, 1), (self.strides,) * 2, padding='VALID',
                    name='downsample_0')(x)
      x = self.norm(name='downsample_1')(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, as torchvision v1.5) -> 1x1 x4 with a shortcut."""
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  projection: bool

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.planes, (1, 1), padding='VALID', name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), (self.strides,) * 2, padding=_pad(3), name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.planes * 4, (1, 1), padding='VALID', name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if self.projection:
      x = self.conv(self.planes * 4, (1, 1), (self.strides,) * 2, padding='VALID',
                    name='downsample_0')(x)
      x = self.norm(name='downsample_1')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk: returns the globally pooled last stage, float32 [B, feature_dim].

  pooling 'avg' (BUC), or 'gem': generalised mean (mean of x^p)^(1/p) with exponent gem_p.
  """
  arch: str = 'resnet50'
  last_stride: int = 2
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  pooling: str = 'avg'
  gem_p: float = 3.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    kind, blocks, widths, stem = arch_spec(self.arch)
    block_cls = BasicBlock if kind == 'basic' else Bottleneck
    conv = functools.partial(self.conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    # torchvision BatchNorm2d: eps 1e-5, running average momentum 0.1. The two-pass variance
    # avoids E[x^2] - E[x]^2 cancellation, which turns reduction-order rounding (1 vs 8 devices)
    # into visible differences.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype,
                             use_fast_variance=False)
    x = x.astype(self.dtype)
    x = conv(stem, (7, 7), (2, 2), padding=_pad(7), name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    # Follows the convolution's mode: on CPU the slice form's gradient is ~3x faster than
    # select_and_scatter's, with the same values.
    x = fast_conv.max_pool(fast_conv.conv_mode(self.conv), x, (3, 3), (2, 2), _pad(3))
    in_planes = stem
    for stage, (n, planes) in enumerate(zip(blocks, widths)):
      for b in range(n):
        strides = 1
        if b == 0 and stage > 0:
          strides = self.last_stride if stage == len(blocks) - 1 else 2
        out_planes = planes * EXPANSION[kind]
        x = block_cls(planes, strides, conv, norm,
                      projection=(b == 0 and (strides != 1 or in_planes != out_planes)),
                      name=f'layer{stage + 1}_{b}')(x)
        in_planes = out_planes
    return global_pool(x, self.pooling, self.gem_p)
