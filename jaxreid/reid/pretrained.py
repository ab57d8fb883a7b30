"""ImageNet initialisation: loading a backbone converted by jaxreid.tools.convert_torchvision.

File format: flax msgpack of {'params': <backbone params>, 'batch_stats': <backbone batch_stats>},
with the names of jaxreid.reid.resnet.ResNet (torchvision's, '.'-indexed blocks joined by '_').
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np


def _flat(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def first_mismatch(found: Mapping, expected: Mapping) -> str | None:
  """A one-line description of the first name or shape of `found` not matching `expected`."""
  got, want = _flat(found), _flat(expected)
  for name, value in got.items():
    if name not in want:
      return f'unexpected entry {name!r} (shape {tuple(np.shape(value))})'
    if tuple(np.shape(value)) != tuple(np.shape(want[name])):
      return (f'entry {name!r} has shape {tuple(np.shape(value))}, expected '
              f'{tuple(np.shape(want[name]))}')
  for name, value in want.items():
    if name not in got:
      return f'missing entry {name!r} (shape {tuple(np.shape(value))})'
  return None


def read_backbone(path: str | os.PathLike) -> dict:
  """The {'params', 'batch_stats'} backbone tree stored in a converted msgpack file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.model.init_checkpoint={path!r}: no such file (write one with '
                            'python -m jaxreid.tools.convert_torchvision resnet50.pth OUT.msgpack)')
  with open(path, 'rb') as f:
    try:
      tree = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: not a msgpack file written by jaxreid.tools.convert_torchvision '
                       f'({type(e).__name__})') from None
  if not isinstance(tree, dict) or set(tree) != {'params', 'batch_stats'}:
    raise ValueError(f'{path}: expected a msgpack dict with keys params and batch_stats, as '
                     'written by jaxreid.tools.convert_torchvision')
  return tree


def load_backbone(path: str | os.PathLike, variables: Mapping, arch: str) -> dict:
  """`variables` with the backbone replaced by the converted checkpoint at `path` (checked)."""
  tree = read_backbone(path)
  expected = {'params': variables['params']['backbone'],
              'batch_stats': variables['batch_stats']['backbone']}
  problem = first_mismatch(tree, expected)
  if problem:
    raise ValueError(f'{os.fspath(path)} does not fit config.model.arch={arch!r}: {problem}')
  tree = jax.tree.map(lambda new, old: np.asarray(new, dtype=old.dtype), tree, expected)
  return {'params': {**variables['params'], 'backbone': tree['params']},
          'batch_stats': {**variables['batch_stats'], 'backbone': tree['batch_stats']}}
