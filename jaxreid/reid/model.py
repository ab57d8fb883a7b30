"""The re-ID network of BUC: a ResNet trunk plus the head giving `feature` and `embedding`.

`feature` = L2-normalise(pooled trunk output), used for clustering and evaluation.
`embedding` = Dropout(L2-normalise(BatchNorm1d(Linear(pooled)))), used only by the repelled loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxreid.reid import resnet

# BUC: Linear with kaiming_normal_(mode='fan_out') (gain sqrt(2)), bias 0.
head_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


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

  @nn.compact
  def __call__(self, images, train: bool = False):
    pooled = resnet.ResNet(self.arch, self.last_stride, self.dtype, self.conv,
                           name='backbone')(images, train)
    e = nn.Dense(self.embedding_dim, kernel_init=head_init, bias_init=nn.initializers.zeros,
                 dtype=self.dtype, name='embed')(pooled)
    e = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name='embed_bn')(e)
    e = l2_normalize(e.astype(jnp.float32))
    # BUC applies dropout after the normalisation, so embeddings are not unit length in training.
    e = nn.Dropout(self.dropout, deterministic=not train)(e)
    return {'feature': l2_normalize(pooled), 'embedding': e}


def build_model(model_config: ml_collections.ConfigDict, conv: Any = nn.Conv) -> ReidNet:
  """The ReidNet described by `config.model`; one-line errors for unusable values."""
  resnet.arch_spec(model_config.arch)
  if model_config.dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={model_config.dtype!r}: expected one of '
                     f'{tuple(_DTYPES)}')
  if model_config.last_stride not in (1, 2):
    raise ValueError(f'config.model.last_stride={model_config.last_stride!r}: expected 1 or 2')
  if not 0.0 <= model_config.dropout < 1.0:
    raise ValueError(f'config.model.dropout={model_config.dropout!r}: expected a value in [0, 1)')
  return ReidNet(arch=model_config.arch, embedding_dim=model_config.embedding_dim,
                 dropout=model_config.dropout, last_stride=model_config.last_stride,
                 dtype=_DTYPES[model_config.dtype], conv=conv)
