"""Global pooling of a trunk's last feature map, shared by the ResNets and EfficientNet-Lite."""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLINGS = ('avg', 'gem')


def global_pool(x: jax.Array, pooling: str = 'avg', gem_p: float = 3.0) -> jax.Array:
  """float32 [B, C] of an NHWC map: its mean ('avg'), or the generalised mean (mean of x^p)^(1/p)
  with exponent `gem_p` ('gem')."""
  if pooling not in POOLINGS:
    raise ValueError(f'config.density.pooling={pooling!r}: expected one of {POOLINGS}')
  x = x.astype(jnp.float32)
  if pooling == 'gem':
    # After the ReLU x >= 0; the clip keeps x^(1/p)'s gradient finite at 0.
    return jnp.mean(jnp.maximum(x, 1e-6) ** gem_p, axis=(1, 2)) ** (1.0 / gem_p)
  return jnp.mean(x, axis=(1, 2))
