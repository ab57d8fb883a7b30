"""A trained re-ID model on disk: what FeatureExtractor loads and the framework writes.

Layout of a model directory (written atomically by Orbax, config last):
  <dir>/variables/         Orbax StandardCheckpointer tree {'params', 'batch_stats'} of a ReidNet
  <dir>/reid_model.json    {"format": "jaxreid-reid-model-v1", "config": <the run's full config>}
A work dir holds its models as <workdir>/best_model (the best validation score) and
<workdir>/model (the latest); `find_model_dir` resolves either a model dir or a work dir.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

FORMAT = 'jaxreid-reid-model-v1'
META_FILE = 'reid_model.json'
VARIABLES_DIR = 'variables'
WORKDIR_MODELS = ('best_model', 'model')


class ModelError(ValueError):
  """A path does not hold a usable model; the message is one line saying what was expected."""


def save_model(directory: str | os.PathLike, variables: Mapping[str, Any],
               config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes {'params', 'batch_stats'} and the config to `directory` (replacing a previous model).

  Multi-host: call it on every process (Orbax coordinates them); process 0 writes the meta file.
  """
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  meta = directory / META_FILE
  if meta.exists():
    meta.unlink()   # a model without its meta file is not trusted while it is rewritten
  target = directory / VARIABLES_DIR
  if target.exists():
    shutil.rmtree(target)
  tree = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, jax.tree.map(np.asarray, jax.device_get(tree)))
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    tmp = meta.with_suffix('.json.tmp')
    tmp.write_text(json.dumps({'format': FORMAT,
                               'config': json.loads(config.to_json_best_effort())}, indent=2))
    os.replace(tmp, meta)
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
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(directory / VARIABLES_DIR)
  return jax.tree.map(np.asarray, variables), config
