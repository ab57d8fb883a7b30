"""The camera-style StarGAN of HHL (Zhong et al., ECCV 2018; docs/method.md), in Flax linen.

Domains are cameras. Images are NHWC float in [-1, 1]. At the default widths and depths this is
exactly the reference architecture; the widths and repeat counts are arguments so that a CPU-sized
variant is the same code.

`conv` ('auto' | 'native' | 'matmul', config.camstyle.conv) picks how each convolution runs, as
config.model.conv does for the re-ID network (jaxreid.reid.fast_conv). Under 'auto', on CPU, every
convolution of the discriminator in the D update runs as slices + one matmul: the gradient
penalty differentiates D's input gradient w.r.t. D's parameters, and XLA:CPU computes those
second derivatives of a native convolution through a slow generic path (27 s against 2.7 s per
batch of 16 for the 128x64, 64 -> 128 down-convolution at 256x128; 4x on the 64x32 synthetic
size). Where only first derivatives are taken (the generator, and D inside the G update:
`second_order=False`) 'auto' keeps the native convolution except on small output maps, as
fast_conv's 'auto' (the matmul form of the large-map layers made the G update 15% slower there).
Accelerators run the native convolution everywhere under 'auto'. The parameters are the same in
every mode.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxreid.reid import fast_conv

# PyTorch's default conv initialisation (uniform, variance 1 / (3 fan_in)), which StarGAN trains with.
_torch_like_kernel = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


# Largest output map (height * width) that 'auto' computes as a matmul in the generator on CPU.
AUTO_MAX_OUTPUT_PIXELS = fast_conv.AUTO_MAX_OUTPUT_PIXELS


def check_conv_mode(mode: str) -> None:
  """Refuses an unknown config.camstyle.conv (one line)."""
  if mode not in fast_conv.CONV_MODES:
    raise ValueError(f'config.camstyle.conv={mode!r}: expected one of {fast_conv.CONV_MODES}')


def discriminator_conv_mode(conv: str, second_order: bool = True) -> str:
  """The mode of every discriminator layer: under 'auto' and differentiated twice, the matmul form
  on CPU (see top); first derivatives only: per layer, as the generator."""
  check_conv_mode(conv)
  if conv == 'auto' and second_order:
    return 'matmul' if jax.default_backend() == 'cpu' else 'native'
  return conv


def _convolve(x, kernel, strides, padding, mode: str):
  """NHWC x HWIO convolution, as a matmul where `mode` picks that for this layer's output map."""
  check_conv_mode(mode)
  kernel = kernel.astype(x.dtype)
  out = fast_conv.output_pixels(x.shape[1:3], kernel.shape[:2], strides, padding)
  if fast_conv.use_matmul(mode, out, kernel.shape[:2] == (1, 1), AUTO_MAX_OUTPUT_PIXELS):
    return fast_conv.matmul_conv(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """A bias-free stride-1 conv with explicit padding (flax.linen.Conv's `kernel` parameter)."""
  features: int
  kernel_size: Sequence[int]
  padding: Sequence[tuple[int, int]]
  mode: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _torch_like_kernel,
                        (*self.kernel_size, x.shape[-1], self.features))
    return _convolve(x, kernel, (1, 1), tuple(self.padding), self.mode)


def _conv(features: int, kernel: int, name: str, mode: str) -> Conv:
  """A 'same'-padded, stride-1 conv without bias."""
  pad = kernel // 2
  return Conv(features, (kernel, kernel), ((pad, pad), (pad, pad)), mode, name=name)


class CameraConv(nn.Module):
  """The generator's 7x7 conv of [images, the camera one-hot tiled over the map] (kernel
  (7, 7, 3 + cameras, out)), without building the tiled channels.

  A tiled one-hot channel is constant over the map, so its convolution is, at each pixel, the
  kernel summed over the taps inside the image: one (h, w, cameras, out) table for the whole
  batch, picked by the one-hot. Only the image channels are convolved per image (on 64x32 CPU
  batches this conv, forward and backward, takes half the time of the 9-channel one).
  """
  features: int
  mode: str = 'auto'

  @nn.compact
  def __call__(self, images, onehot):
    _, h, w, cin = images.shape
    cameras = onehot.shape[-1]
    kernel = self.param('kernel', _torch_like_kernel, (7, 7, cin + cameras, self.features))
    pad = ((3, 3), (3, 3))
    y = _convolve(images, kernel[:, :, :cin], (1, 1), pad, self.mode)
    ones = jnp.ones((1, h, w, 1), images.dtype)
    table = _convolve(ones, kernel[:, :, cin:].reshape(7, 7, 1, cameras * self.features),
                      (1, 1), pad, self.mode).reshape(h, w, cameras, self.features)
    return y + jnp.einsum('bc,hwco->bhwo', onehot, table)


class DownConv(nn.Module):
  """torch Conv2d(in, out, 4, stride=2, padding=1) computed as space-to-depth + a 2x2 conv.

  Same parameters (kernel (4, 4, in, out)) and the same result as the strided conv; every
  convolution left, forward and backward, is stride 1, which XLA runs on its fast path on CPU
  too (strided convs and their gradients fall back to a slow generic loop there). Where `mode`
  picks the matmul form for the output map, the strided conv is computed as slices + a matmul.
  """
  features: int
  use_bias: bool = False
  mode: str = 'auto'

  @nn.compact
  def __call__(self, x):
    _, h, w, c = x.shape
    kernel = self.param('kernel', _torch_like_kernel, (4, 4, c, self.features))
    check_conv_mode(self.mode)
    if fast_conv.use_matmul(self.mode, (h // 2) * (w // 2), False, AUTO_MAX_OUTPUT_PIXELS):
      y = fast_conv.matmul_conv(x, kernel.astype(x.dtype), (2, 2), ((1, 1), (1, 1)))
    else:
      y = self._space_to_depth_conv(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y

  def _space_to_depth_conv(self, x, kernel):
    b, h, w, c = x.shape
    # One extra zero row / column for odd sizes keeps the 2x2 blocks aligned; its output is cut.
    x = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + w % 2), (0, 0)))
    hp, wp = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(b, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, 4 * c)
    # kernel row ky = 2a + p: block offset a, phase p (the order of the depth above).
    k = kernel.reshape(2, 2, 2, 2, c, self.features).transpose(0, 2, 1, 3, 4, 5)
    y = jax.lax.conv_general_dilated(x, k.reshape(2, 2, 4 * c, self.features).astype(x.dtype),
                                     (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y[:, :h // 2, :w // 2]


# For output phase r of a stride-2 transposed conv, which 4x4 kernel row meets the input row at
# offset -1, 0, +1 (4: none; it indexes an appended zero row).
_UP_TAPS = np.array([[3, 1, 4], [4, 2, 0]])


class UpConv(nn.Module):
  """torch ConvTranspose2d(in, out, 4, stride=2, padding=1) as a 3x3 conv + depth-to-space.

  The kernel is (4, 4, in, out) with torch_weight[i, o, ky, kx] = kernel[ky, kx, i, o]; each of
  the four output phases is a 3x3 conv with some taps zero (stride 1 throughout, see DownConv).
  """
  features: int
  mode: str = 'auto'

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    o = self.features
    # fan_in over (4, 4, out), as torch initialises ConvTranspose2d.
    kernel = self.param('kernel', lambda key, shape: _torch_like_kernel(
        key, (4, 4, o, c)).transpose(0, 1, 3, 2), (4, 4, c, o))
    kp = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    k3 = kp[_UP_TAPS][:, :, _UP_TAPS]  # (ry, dy, rx, dx, in, out)
    k3 = k3.transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, c, 4 * o)
    y = _convolve(x, k3, (1, 1), ((1, 1), (1, 1)), self.mode)
    return y.reshape(b, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, o)


def _instance_norm(name: str) -> nn.InstanceNorm:
  # epsilon as torch.nn.InstanceNorm2d; always instance statistics (no running averages).
  return nn.InstanceNorm(epsilon=1e-5, use_bias=True, use_scale=True, name=name)


def check_image_size(height: int, width: int, d_repeat_num: int, what: str = 'camstyle') -> None:
  """Refuses an image size the generator cannot map back to itself or the discriminator shrinks
  below one pixel (one clear line)."""
  if height % 4 or width % 4:
    raise ValueError(f'{what} image size {height}x{width}: expected height and width divisible by '
                     '4 (the generator downsamples twice and upsamples back)')
  map_h, map_w = discriminator_map_size(height, width, d_repeat_num)
  if map_h < 1 or map_w < 1:
    raise ValueError(f'{what} discriminator depth d_repeat_num={d_repeat_num} shrinks a '
                     f'{height}x{width} image below 1 pixel; expected at most '
                     f'{max_discriminator_depth(height, width)} stride-2 convolutions at this size')


def discriminator_map_size(height: int, width: int, d_repeat_num: int) -> tuple[int, int]:
  """Size of the discriminator's last feature map (each 4x4 / stride 2 / pad 1 conv halves, floored)."""
  for _ in range(d_repeat_num):
    height, width = height // 2, width // 2
  return height, width


def max_discriminator_depth(height: int, width: int) -> int:
  """The deepest discriminator whose feature map keeps at least one pixel."""
  depth = 0
  while min(discriminator_map_size(height, width, depth + 1)) >= 1:
    depth += 1
  return depth


class ResidualBlock(nn.Module):
  """conv3x3-IN-ReLU-conv3x3-IN with an identity skip and no ReLU after the add."""
  features: int
  conv: str = 'auto'

  @nn.compact
  def __call__(self, x):
    y = _conv(self.features, 3, 'conv1', self.conv)(x)
    y = nn.relu(_instance_norm('norm1')(y))
    y = _conv(self.features, 3, 'conv2', self.conv)(y)
    return x + _instance_norm('norm2')(y)


class Generator(nn.Module):
  """G(images, target_onehot) -> images: translates NHWC images in [-1, 1] to the target camera."""
  num_cameras: int
  conv_dim: int = 64
  repeat_num: int = 6
  conv: str = 'auto'  # 'auto' | 'native' | 'matmul' (config.camstyle.conv)

  @nn.compact
  def __call__(self, images, target_onehot):
    b, h, w, _ = images.shape
    if h % 4 or w % 4:
      raise ValueError(f'generator input {h}x{w}: expected height and width divisible by 4')
    if target_onehot.shape != (b, self.num_cameras):
      raise ValueError(f'generator target shape {target_onehot.shape}: expected '
                       f'{(b, self.num_cameras)} (one-hot over cameras)')
    dim = self.conv_dim
    x = CameraConv(dim, self.conv, name='conv_in')(images, target_onehot.astype(images.dtype))
    x = nn.relu(_instance_norm('norm_in')(x))
    for i in range(2):
      dim *= 2
      x = DownConv(dim, mode=self.conv, name=f'down{i}')(x)
      x = nn.relu(_instance_norm(f'down{i}_norm')(x))
    for i in range(self.repeat_num):
      x = ResidualBlock(dim, self.conv, name=f'res{i}')(x)
    for i in range(2):
      dim //= 2
      x = UpConv(dim, self.conv, name=f'up{i}')(x)
      x = nn.relu(_instance_norm(f'up{i}_norm')(x))
    return jnp.tanh(_conv(3, 7, 'conv_out', self.conv)(x))


class Discriminator(nn.Module):
  """D(images) -> (src_patch_logits (B, h, w, 1), camera_logits (B, num_cameras)): a PatchGAN
  critic with a camera classifier whose kernel covers the whole last feature map."""
  num_cameras: int
  image_size: Sequence[int]  # (height, width)
  conv_dim: int = 64
  repeat_num: int = 6
  conv: str = 'auto'  # 'auto' | 'native' | 'matmul' (config.camstyle.conv)
  second_order: bool = True  # whether the caller differentiates twice (the gradient penalty)

  @nn.compact
  def __call__(self, images):
    height, width = self.image_size
    if tuple(images.shape[1:3]) != (height, width):
      raise ValueError(f'discriminator input {images.shape[1]}x{images.shape[2]}: expected the '
                       f'{height}x{width} it was built for')
    check_image_size(height, width, self.repeat_num, what='discriminator')
    x, dim, mode = images, self.conv_dim, discriminator_conv_mode(self.conv, self.second_order)
    for i in range(self.repeat_num):
      x = nn.leaky_relu(DownConv(dim, True, mode, name=f'conv{i}')(x), 0.01)
      dim *= 2
    src = _conv(1, 3, 'src', mode)(x)
    kh, kw = discriminator_map_size(height, width, self.repeat_num)
    cls = Conv(self.num_cameras, (kh, kw), ((0, 0), (0, 0)), mode, name='cls')(x)
    return src, cls.reshape(cls.shape[0], self.num_cameras)


def build(camstyle_config, num_cameras: int) -> tuple[Generator, Discriminator]:
  """The (G, D) pair described by `config.camstyle` for `num_cameras` cameras."""
  c = camstyle_config
  check_image_size(c.height, c.width, c.d_repeat_num)
  check_conv_mode(c.conv)
  g = Generator(num_cameras, conv_dim=c.g_conv_dim, repeat_num=c.g_repeat_num, conv=c.conv)
  d = Discriminator(num_cameras, (c.height, c.width), conv_dim=c.d_conv_dim,
                    repeat_num=c.d_repeat_num, conv=c.conv)
  return g, d
