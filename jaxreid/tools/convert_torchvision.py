"""Converts a torchvision ResNet checkpoint (.pth state dict) into jaxreid's backbone msgpack.

  python -m jaxreid.tools.convert_torchvision resnet50.pth resnet50.msgpack
  python -m jaxreid.main ... --config.model.init_checkpoint=resnet50.msgpack

torch (the `convert` extra) is needed only here; the file is read with weights_only=True. Names map
one to one (`layer1.0.downsample.1.running_var` -> batch_stats `layer1_0/downsample_1/var`), conv
weights are transposed OIHW -> HWIO, the 1000-way `fc` is dropped. The architecture is recognised
from the keys; a state dict that does not fit fails with one line naming the first mismatch.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxreid import atomic
from jaxreid.reid import resnet

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_IGNORED = ('num_batches_tracked',)


class ConversionError(ValueError):
  """The state dict is not a torchvision ResNet jaxreid knows; one line naming the first problem."""


def expected_backbone(arch: str) -> dict:
  """{'params', 'batch_stats'} shapes of jaxreid's backbone for `arch` (no computation)."""
  net = resnet.ResNet(arch)
  v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 32, 3)))
  return {'params': v['params'], 'batch_stats': v['batch_stats']}


def detect_arch(state_dict: Mapping[str, np.ndarray]) -> str:
  """Which of jaxreid's ResNets a torchvision state dict holds (from its block names)."""
  keys = set(state_dict)
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in keys else 'basic'
  blocks = tuple(len({k.split('.')[1] for k in keys if k.startswith(f'layer{s}.')})
                 for s in range(1, 5))
  stem = np.shape(state_dict['conv1.weight'])[0] if 'conv1.weight' in keys else None
  for arch, (a_kind, a_blocks, _, a_stem) in resnet.ARCHS.items():
    if (a_kind, a_blocks, a_stem) == (kind, blocks, stem):
      return arch
  raise ConversionError(f'not a torchvision ResNet-18/34/50 state dict: {kind} blocks {blocks}, '
                        f'stem width {stem}; expected one of {tuple(resnet.ARCHS)}')


def _target(key: str) -> tuple[str, tuple[str, ...], bool]:
  """torch key -> (collection, flax path, is conv weight)."""
  parts = key.split('.')
  module, leaf = parts[:-1], parts[-1]
  path = []
  i = 0
  while i < len(module):
    # 'layer1', '0' -> 'layer1_0'; 'downsample', '1' -> 'downsample_1'
    if i + 1 < len(module) and module[i + 1].isdigit():
      path.append(f'{module[i]}_{module[i + 1]}')
      i += 2
    else:
      path.append(module[i])
      i += 1
  is_conv = path[-1].startswith('conv') or path[-1] == 'downsample_0'
  if is_conv:
    if leaf != 'weight':
      raise ConversionError(f'unexpected key {key!r}: convolutions have no {leaf!r}')
    return 'params', (*path, 'kernel'), True
  if leaf not in _BN:
    raise ConversionError(f'unexpected key {key!r}: no jaxreid parameter takes {leaf!r}')
  collection, name = _BN[leaf]
  return collection, (*path, name), False


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str | None = None) -> dict:
  """The jaxreid backbone {'params', 'batch_stats'} (numpy float32) of a torchvision state dict."""
  state_dict = {k: v for k, v in state_dict.items()
                if not k.startswith('fc.') and k.split('.')[-1] not in _IGNORED}
  arch = arch or detect_arch(state_dict)
  expected = expected_backbone(arch)
  out: dict = {'params': {}, 'batch_stats': {}}
  for key, value in state_dict.items():
    collection, path, is_conv = _target(key)
    value = np.asarray(value, np.float32)
    if is_conv:
      if value.ndim != 4:
        raise ConversionError(f'key {key!r} has shape {value.shape}; expected a 4-d conv weight')
      value = value.transpose(2, 3, 1, 0)    # OIHW -> HWIO
    want = expected[collection]
    for p in path:
      want = want.get(p) if isinstance(want, Mapping) else None
      if want is None:
        raise ConversionError(f'unexpected key {key!r}: {arch} has no {"/".join(path)}')
    if value.shape != want.shape:
      torch_shape = value.transpose(3, 2, 0, 1).shape if is_conv else value.shape
      want_shape = (tuple(want.shape[i] for i in (3, 2, 0, 1)) if is_conv else want.shape)
      raise ConversionError(f'key {key!r} has shape {tuple(torch_shape)}, expected '
                            f'{tuple(want_shape)} for {arch}')
    node = out[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  for collection in ('params', 'batch_stats'):
    missing = _first_missing(out[collection], expected[collection])
    if missing:
      raise ConversionError(f'missing key {_torch_key(collection, missing)!r} for {arch}')
  return out


def _first_missing(found: Mapping, expected: Mapping, prefix=()) -> tuple[str, ...] | None:
  for name, sub in expected.items():
    if name not in found:
      return (*prefix, name) if not isinstance(sub, Mapping) else (
          *prefix, name, *_first_leaf(sub))
    if isinstance(sub, Mapping):
      hit = _first_missing(found[name], sub, (*prefix, name))
      if hit:
        return hit
  return None


def _first_leaf(tree: Mapping) -> tuple[str, ...]:
  name, sub = next(iter(tree.items()))
  return (name, *_first_leaf(sub)) if isinstance(sub, Mapping) else (name,)


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision name of a jaxreid backbone entry (for messages)."""
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
          'var': 'running_var'}[path[-1]]
  modules = [p.replace('_', '.') if p.startswith(('layer', 'downsample')) else p
             for p in path[:-1]]
  return '.'.join([*modules, leaf])


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A .pth state dict as numpy arrays (torch.load with weights_only=True; no code is run)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError('reading .pth files needs torch: pip install "jaxreid[convert]"'
                          ) from None
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f'{path}: no such file; expected a torchvision .pth checkpoint')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(f'{path}: torch.load(weights_only=True) failed: {first}') from None
  if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']
  if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise ConversionError(f'{path}: expected a state dict (name -> tensor), got '
                          f'{type(obj).__name__}')
  return {k: v.detach().cpu().float().numpy() for k, v in obj.items()}


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None) -> str:
  """Reads a .pth, writes the msgpack that config.model.init_checkpoint takes; returns the arch."""
  state_dict = load_torch_state_dict(src)
  arch = arch or detect_arch(state_dict)
  tree = convert_state_dict(state_dict, arch)
  atomic.write_bytes(dst, flax.serialization.msgpack_serialize(tree))
  return arch


def main(argv=None) -> int:
  """Command line: convert_torchvision SRC.pth DST.msgpack [--arch ARCH]."""
  parser = argparse.ArgumentParser(prog='python -m jaxreid.tools.convert_torchvision',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('src', help='torchvision ResNet state dict (.pth)')
  parser.add_argument('dst', help='output .msgpack for --config.model.init_checkpoint')
  parser.add_argument('--arch', choices=tuple(resnet.ARCHS), default=None,
                      help='default: recognised from the keys')
  args = parser.parse_args(argv)
  try:
    arch = convert_file(args.src, args.dst, args.arch)
  except ConversionError as e:
    print(f'convert_torchvision: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.dst} ({arch} backbone)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
