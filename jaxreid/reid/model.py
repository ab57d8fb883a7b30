"""The re-ID network of BUC: a trunk (ResNet or EfficientNet-Lite) plus the head giving `feature` and `embedding`.

`feature` = L2-normalise(pooled trunk output), used for clustering and evaluation.
`embedding` = Dropout(L2-normalise(BatchNorm1d(Linear(pooled)))), used only by the repelled loss.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxreid.reid import efficientnet, fast_conv, resnet

# BUC: Linear with kaiming_normal_(mode='fan_out') (gain sqrt(2)), bias 0.
head_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
ARCHS = (*resnet.ARCHS, *efficientnet.ARCHS)


def feature_dim(arch: str) -> int:
  """Channels of the pooled trunk output, the `feature` (2048 for ResNet-50, 1280 for Lite0)."""
  if arch in efficientnet.ARCHS:
    return efficientnet.HEAD_WIDTH
  return resnet.feature_dim(arch)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||, eps) along the last axis (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class ReidNet(nn.Module):
  """Backbone + BUC head; `__call__(images, train)` -> {'feature', 'embedding'} (float32)."""
  arch: str = 'resnet50'
  embedding_dim: int = 2048
  dropout: float = 0.5
  last_stride: int = 2
  dtype: Any = jnp.float32
  conv: Any = nn.Conv
  drop_connect: float = 0.2     # EfficientNet-Lite only: per-sample residual-branch dropout
  frozen_stages: int = 0        # EfficientNet-Lite only: leading stages kept as initialised

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.arch in efficientnet.ARCHS:
      trunk = efficientnet.EfficientNetLite(self.arch, self.drop_connect, self.dtype, self.conv,
                                            self.frozen_stages, name='backbone')
    else:
      trunk = resnet.ResNet(self.arch, self.last_stride, self.dtype, self.conv, name='backbone')
    pooled = trunk(images, train)
    e = nn.Dense(self.embedding_dim, kernel_init=head_init, bias_init=nn.initializers.zeros,
                 dtype=self.dtype, name='embed')(pooled)
    e = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, use_fast_variance=False, name='embed_bn')(e)
    e = l2_normalize(e.astype(jnp.float32))
    # BUC applies dropout after the normalisation, so embeddings are not unit length in training.
    e = nn.Dropout(self.dropout, deterministic=not train)(e)
    return {'feature': l2_normalize(pooled), 'embedding': e}


def build_model(model_config: ml_collections.ConfigDict, conv: Any = None) -> ReidNet:
  """The ReidNet described by `config.model`; one-line errors for unusable values.

  `conv` overrides the convolution module chosen by `config.model.conv`.
  """
  if model_config.arch not in ARCHS:
    raise ValueError(f'config.model.arch={model_config.arch!r}: expected one of {ARCHS}')
  if model_config.dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={model_config.dtype!r}: expected one of '
                     f'{tuple(_DTYPES)}')
  if model_config.last_stride not in (1, 2):
    raise ValueError(f'config.model.last_stride={model_config.last_stride!r}: expected 1 or 2')
  if not 0.0 <= model_config.dropout < 1.0:
    raise ValueError(f'config.model.dropout={model_config.dropout!r}: expected a value in [0, 1)')
  drop_connect = model_config.get('drop_connect', 0.2)
  if not 0.0 <= drop_connect < 1.0:
    raise ValueError(f'config.model.drop_connect={drop_connect!r}: expected a value in [0, 1)')
  frozen = model_config.get('frozen_stages', 0)
  if frozen and model_config.arch not in efficientnet.ARCHS:
    raise ValueError(f'config.model.frozen_stages={frozen!r}: only efficientnet_lite0 has frozen '
                     f'stages; expected 0 for config.model.arch={model_config.arch!r}')
  if not 0 <= frozen <= len(efficientnet.LITE0_STAGES):
    raise ValueError(f'config.model.frozen_stages={frozen!r}: expected 0 to '
                     f'{len(efficientnet.LITE0_STAGES)}')
  if model_config.get('head', 'buc') == 'bn':
    from jaxreid.reid import cluster_memory   # the density head's network
    return cluster_memory.DensityNet(
        arch=model_config.arch, last_stride=model_config.last_stride,
        dtype=_DTYPES[model_config.dtype], pooling=model_config.get('pooling', 'avg'),
        gem_p=float(model_config.get('gem_p', 3.0)), drop_connect=drop_connect,
        frozen_stages=frozen, conv=conv or fast_conv.conv_module(model_config.get('conv', 'auto')))
  return ReidNet(arch=model_config.arch, embedding_dim=model_config.embedding_dim,
                 dropout=model_config.dropout, last_stride=model_config.last_stride,
                 drop_connect=drop_connect, frozen_stages=frozen,
                 dtype=_DTYPES[model_config.dtype],
                 conv=conv or fast_conv.conv_module(model_config.get('conv', 'auto')))


def frozen_modules(model_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Backbone modules that `config.model.frozen_stages` keeps as initialised (no update)."""
  if model_config.arch not in efficientnet.ARCHS:
    return ()
  return efficientnet.frozen_modules(model_config.get('frozen_stages', 0))


def key_data(rng: jax.Array) -> jax.Array:
  """The uint32 data of a typed key (jax.random.key) or a raw one (jax.random.PRNGKey)."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return jnp.asarray(rng, jnp.uint32)


# XLA's default optimisation makes compiling the initialisers' random number code take 20-45 s on
# a 2-core CPU (ResNet-50 35 s, EfficientNet-Lite0 46 s, measured 2026-12-02); at level 0 it takes
# 9-12 s, and init runs once per run, so its speed does not matter. The level fixes the values.
_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0,
                          'xla_llvm_disable_expensive_passes': True}


@functools.partial(jax.jit, static_argnames=('net', 'height', 'width'),
                   compiler_options=_INIT_COMPILER_OPTIONS)
def _init(net: nn.Module, rng: jax.Array, height: int, width: int) -> dict:
  return net.init(rng, jnp.zeros((1, height, width, 3), jnp.float32), train=False)


def init_variables(net: nn.Module, rng: jax.Array, height: int, width: int) -> dict:
  """Initial {'params', 'batch_stats'} as numpy: `net.init` (jitted), each module's initialisers."""
  return jax.device_get(dict(_init(net, rng, int(height), int(width))))
