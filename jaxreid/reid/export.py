"""A trained re-ID model on disk: what FeatureExtractor loads and the framework writes.

Layout of a model directory (each file replaced atomically, config last):
  <dir>/variables.msgpack  flax msgpack of {'params', 'batch_stats'} of a ReidNet
  <dir>/reid_model.json    {"format": "jaxreid-reid-model-v1", "config": <the run's full config>}
A work dir holds its models as <workdir>/best_model (the best validation score) and
<workdir>/model (the latest); `find_model_dir` resolves either a model dir or a work dir.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from jaxreid import atomic

FORMAT = 'jaxreid-reid-model-v1'
META_FILE = 'reid_model.json'
VARIABLES_FILE = 'variables.msgpack'
WORKDIR_MODELS = ('best_model', 'model')


class ModelError(ValueError):
  """A path does not hold a usable model; the message is one line saying what was expected."""


def save_model(directory: str | os.PathLike, variables: Mapping[str, Any],
               config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes {'params', 'batch_stats'} and the config to `directory` (replacing a previous model).

  Both files are replaced atomically, the meta file last, so a reader never sees a half model.
  Multi-host: the variables are replicated, so only the primary process writes (others return).
  """
  directory = pathlib.Path(directory).absolute()
  tree = jax.tree.map(np.asarray, jax.device_get(
      {'params': variables['params'], 'batch_stats': variables['batch_stats']}))
  if jax.process_index() != 0:
    return directory
  directory.mkdir(parents=True, exist_ok=True)
  meta = directory / META_FILE
  if meta.exists():
    meta.unlink()   # a model without its meta file is not trusted while it is rewritten
  atomic.write_bytes(directory / VARIABLES_FILE, serialization.msgpack_serialize(tree))
  atomic.write_bytes(meta, json.dumps({'format': FORMAT, 'config': json.loads(config.to_json_best_effort())},
                            indent=2).encode())
  return directory


def find_model_dir(path: str | os.PathLike) -> pathlib.Path:
  """`path` if it is a model dir, else its best_model / model sub-folder; one-line error if none."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ModelError(f'{path}: no such file or folder; expected a work dir or a model dir '
                     f'(holding {META_FILE})')
  for candidate in (path, *(path / name for name in WORKDIR_MODELS)):
    if (candidate / META_FILE).is_file():
      return candidate
  raise ModelError(f'{path}: holds no trained model; expected {META_FILE} in it or in its '
                   f'{" or ".join(WORKDIR_MODELS)} sub-folder')


def load_model(path: str | os.PathLike) -> tuple[dict, ml_collections.ConfigDict]:
  """(variables as numpy, config) of the model in a model dir or work dir."""
  directory = find_model_dir(path).absolute()
  try:
    meta = json.loads((directory / META_FILE).read_text())
  except ValueError:
    raise ModelError(f'{directory / META_FILE}: not valid JSON; expected a file written by '
                     'jaxreid.reid.export.save_model') from None
  found = meta.get('format') if isinstance(meta, dict) else None
  if found != FORMAT:
    raise ModelError(f'{directory / META_FILE}: format {found!r}, expected {FORMAT!r}')
  config = ml_collections.ConfigDict(meta['config'])
  try:
    variables = serialization.msgpack_restore((directory / VARIABLES_FILE).read_bytes())
  except (OSError, ValueError) as e:
    raise ModelError(f'{directory / VARIABLES_FILE}: unreadable ({type(e).__name__}); expected '
                     'the variables written by jaxreid.reid.export.save_model') from None
  variables = jax.tree.map(np.asarray, variables)
  check_variables(variables, config, directory)
  return variables, config


def _leaves(variables) -> dict[str, tuple]:
  """{'params/a/kernel': shape, ...}, params first."""
  out = {}
  for collection in ('params', 'batch_stats'):
    flat, _ = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))
    out.update({'/'.join([collection, *(str(getattr(k, 'key', k)) for k in path)]):
                tuple(np.shape(leaf)) for path, leaf in flat})
  return out


def check_variables(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
                    directory: str | os.PathLike) -> None:
  """One-line ModelError unless `variables` have the names and shapes of config.model's network
  (weights of another arch or embedding size would otherwise fail deep inside the first call)."""
  from jaxreid.reid import model as model_lib
  directory = pathlib.Path(directory)
  try:
    net = model_lib.build_model(config.model)
    h, w = int(config.data.height), int(config.data.width)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise ModelError(f'{directory / META_FILE}: unusable model config ({e})') from None
  expected = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0),
                            jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  want, got = _leaves(expected), _leaves(variables)
  model = f'the {config.model.arch} model of {META_FILE} (embedding_dim {config.model.embedding_dim})'
  where = directory / VARIABLES_FILE
  for name, shape in want.items():
    if name not in got:
      raise ModelError(f'{where}: has no {name}, which {model} needs; the weights and '
                       f'{META_FILE} belong to different models')
    if got[name] != shape:
      raise ModelError(f'{where}: {name} has shape {got[name]}, {model} expects {shape}; the '
                       f'weights and {META_FILE} belong to different models')
  extra = sorted(set(got) - set(want))
  if extra:
    raise ModelError(f'{where}: holds {extra[0]} (and {len(extra) - 1} more) that {model} does '
                     f'not have; the weights and {META_FILE} belong to different models')
