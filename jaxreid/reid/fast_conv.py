"""Convolution as shifted slices plus one matmul, for layers where XLA:CPU's convolution is slow.

XLA:CPU runs convolutions on small spatial maps (and their gradients) through a slow generic path:
a 3x3, 512 -> 512 convolution on a 4x2 map takes about a second per batch while far larger maps
take milliseconds. Written as kh*kw strided slices of the padded input, concatenated on the channel
axis, times the kernel reshaped to [kh*kw*C, F], the same arithmetic becomes a single matmul whose
gradients are matmuls, pads and slices. The parameter is the same `kernel` [kh, kw, C, F] as
flax.linen.Conv's, so checkpoints and converted torchvision weights load unchanged.

`FastConv(mode='auto')` picks per layer, at trace time: the matmul form on CPU for 1x1 kernels and
for layers whose output map is tiny (where it is faster), the native convolution everywhere else
and on accelerators.

`max_pool(mode, ...)` likewise replaces the ResNet stem's max-pool on CPU by strided slices with a
hand-written gradient (same values and tie rule): XLA:CPU's select_and_scatter backward is ~3x
slower than torch's on the 128x64 map of a 256x128 input.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Largest output map (height * width) for which 'auto' runs a kh x kw (> 1x1) convolution as a
# matmul on CPU. Timed per ResNet layer (forward + backward, batch 32, 2 cores): 4x2 maps gain
# 15-80x, 8x4 maps break even, larger maps lose up to 5x (the slices and concatenation cost more
# than XLA:CPU's convolution). 1x1 convolutions are plain matmuls and gain 1.3-4x at every size.
AUTO_MAX_OUTPUT_PIXELS = 16

CONV_MODES = ('auto', 'native', 'matmul')


def _explicit_padding(padding: Any, kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    if padding.upper() == 'VALID':
      return tuple((0, 0) for _ in kernel_size)
    raise ValueError(f'padding={padding!r}: expected VALID or explicit ((lo, hi), (lo, hi)) pairs')
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def matmul_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> jax.Array:
  """NHWC convolution with an HWIO kernel computed as shifted strided slices and one matmul."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  (pt, pb), (pl, pr) = padding
  if pt or pb or pl or pr:
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  # Slice (i, j) holds input pixel (i + sh*y, j + sw*x) for every output pixel (y, x).
  taps = [jax.lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, cin),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  # Concatenation order (kh, kw, C) matches the HWIO kernel's row-major flattening.
  return jnp.dot(patches.reshape(n * oh * ow, kh * kw * cin), kernel.reshape(-1, cout)
                 ).reshape(n, oh, ow, cout)


def output_pixels(in_hw: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int],
                  padding: Sequence[tuple[int, int]]) -> int:
  """Height * width of a convolution's output map."""
  out = 1
  for n, k, s, (lo, hi) in zip(in_hw, kernel_size, strides, padding):
    out *= (n + lo + hi - k) // s + 1
  return out


def use_matmul(mode: str, out_pixels: int, pointwise: bool = False,
               max_output_pixels: int = AUTO_MAX_OUTPUT_PIXELS) -> bool:
  """Whether a layer (1x1 if `pointwise`) with an `out_pixels` output map runs as a matmul."""
  if mode not in CONV_MODES:
    raise ValueError(f'config.model.conv={mode!r}: expected one of {CONV_MODES}')
  if mode == 'auto':
    return jax.default_backend() == 'cpu' and (pointwise or out_pixels <= max_output_pixels)
  return mode == 'matmul'


class FastConv(nn.Module):
  """Drop-in for flax.linen.Conv (2-D, NHWC, no dilation or groups), same parameters.

  `mode`: 'native' (lax.conv_general_dilated, as flax.linen.Conv), 'matmul' (`matmul_conv`) or
  'auto' (matmul only on CPU: 1x1 kernels, and larger kernels whose output map has at most
  `max_output_pixels` pixels).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = 'VALID'
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32
  mode: str = 'auto'
  max_output_pixels: int = AUTO_MAX_OUTPUT_PIXELS

  @nn.compact
  def __call__(self, x):
    kernel_size = tuple(self.kernel_size)
    strides = tuple(self.strides or (1, 1))
    padding = _explicit_padding(self.padding, kernel_size)
    kernel = self.param('kernel', self.kernel_init,
                        (*kernel_size, x.shape[-1], self.features), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if use_matmul(self.mode, output_pixels(x.shape[1:3], kernel_size, strides, padding),
                  kernel_size == (1, 1), self.max_output_pixels):
      y = matmul_conv(x, kernel, strides, padding)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


# Cached: one object per mode, so that two networks built from one config compare equal and
# jitted functions keyed on the network (extract._feature_fn) are compiled once, not per call.
@functools.lru_cache(maxsize=None)
def conv_module(mode: str, max_output_pixels: int = AUTO_MAX_OUTPUT_PIXELS) -> Any:
  """The convolution class for `config.model.conv` ('auto' | 'native' | 'matmul')."""
  use_matmul(mode, 0)   # validates the name
  if mode == 'native':
    return nn.Conv
  return functools.partial(FastConv, mode=mode, max_output_pixels=max_output_pixels)


def _window_taps(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                 out_hw: Sequence[int]) -> list[jax.Array]:
  """The kh*kw strided slices of padded NHWC `x`, tap (i, j) in row-major order."""
  n, _, _, c = x.shape
  (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
  return [jax.lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _slice_max_pool(x, window, strides, padding):
  y, _ = _slice_max_pool_fwd(x, window, strides, padding)
  return y


def _slice_max_pool_fwd(x, window, strides, padding):
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_hw = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:3], window, strides)]
  taps = _window_taps(xp, window, strides, out_hw)
  # The index of each window's maximum, kept for the backward pass (1 byte for up to 127 taps).
  index_dtype = jnp.int8 if len(taps) < 128 else jnp.int32
  y, first = taps[0], jnp.zeros(taps[0].shape, index_dtype)
  # A later tap takes over only when strictly larger: each window's FIRST maximum in row-major
  # order, where XLA's select_and_scatter (select = ge) and torch's max-pool send the gradient
  # on ties (ReLU zeros are everywhere).
  for t, tap in enumerate(taps[1:], 1):
    first = jnp.where(tap > y, jnp.asarray(t, index_dtype), first)
    y = jnp.maximum(y, tap)
  return y, (first, x.shape)


def _slice_max_pool_bwd(window, strides, padding, res, g):
  first, x_shape = res
  # Barriers on the way in and out keep XLA from fusing the incoming gradient's producers into
  # (and this nine-tap sum into) each consumer, where they would be recomputed per tap / per user.
  g = jax.lax.optimization_barrier(g)
  (pt, pb), (pl, pr) = padding
  hp, wp = x_shape[1] + pt + pb, x_shape[2] + pl + pr
  (kh, kw), (sh, sw), (oh, ow) = window, strides, g.shape[1:3]
  scattered = []
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    # Tap (i, j) of output pixel (a, b) is padded input pixel (i + sh*a, j + sw*b).
    scattered.append(jax.lax.pad(
        jnp.where(first == t, g, jnp.zeros_like(g)), jnp.array(0, g.dtype),
        ((0, 0, 0), (i, hp - i - sh * (oh - 1) - 1, sh - 1),
         (j, wp - j - sw * (ow - 1) - 1, sw - 1), (0, 0, 0))))
  # Summed in reverse tap order, an input pixel receives its windows' gradients in row-major
  # window order, the order select_and_scatter adds them in: the same float sums, bit for bit.
  gp = functools.reduce(jnp.add, scattered[::-1])
  return (jax.lax.optimization_barrier(gp[:, pt:pt + x_shape[1], pl:pl + x_shape[2]]),)


_slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


def slice_max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                   padding: Sequence[tuple[int, int]]) -> jax.Array:
  """NHWC max-pool as strided slices, with the gradient of flax.linen.max_pool (first maximum)."""
  return _slice_max_pool(x, tuple(window), tuple(strides),
                         tuple((int(lo), int(hi)) for lo, hi in padding))


def max_pool(mode: str, x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> jax.Array:
  """Max-pool for `config.model.conv`: the slice form on CPU under 'auto' and 'matmul'.

  XLA:CPU's gradient of reduce_window max (select_and_scatter) is about 3x slower than torch's on
  the ResNet stem's 128x64 map; the slice form's backward is elementwise and fuses.
  """
  if mode not in CONV_MODES:
    raise ValueError(f'config.model.conv={mode!r}: expected one of {CONV_MODES}')
  if mode == 'matmul' or (mode == 'auto' and jax.default_backend() == 'cpu'):
    return slice_max_pool(x, window, strides, padding)
  # Padded here, not by nn.max_pool: the same values, and ONNX converters that replace flax's
  # pooling (jax2onnx) take only 'SAME' / 'VALID' padding, not explicit pairs.
  x = jnp.pad(x, ((0, 0), *(tuple(p) for p in padding), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding='VALID')


def conv_mode(conv: Any) -> str:
  """The mode of a class from `conv_module` ('native' for flax.linen.Conv or anything else)."""
  if isinstance(conv, functools.partial) and conv.func is FastConv:
    return conv.keywords.get('mode', 'auto')
  return 'native'
