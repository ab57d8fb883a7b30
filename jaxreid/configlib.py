"""Config plumbing: loading sibling config files and checking values users can get wrong."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import types

import ml_collections

# config.cluster.features_on_device (read by parallel.keep_on_device).
ON_DEVICE_SETTINGS = ('auto', 'True', 'False')


class ConfigError(ValueError):
  """A config value a user set is not usable; the message is one line naming the key."""


def load_sibling(config_file: str, name: str) -> types.ModuleType:
  """Imports `name`.py from the folder of `config_file` (configs/ is plain files, not a package)."""
  path = pathlib.Path(config_file).resolve().parent / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'jaxreid_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_file_from_argv(argv) -> str | None:
  """The value of --config=FILE in a command line, if any."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def describe_override_error(argv, error: Exception) -> str:
  """One line for a bad --config.a.b=v: names an unknown key if there is one, else the error."""
  config_file = config_file_from_argv(argv)
  if config_file is not None:
    try:
      spec = importlib.util.spec_from_file_location('jaxreid_user_config', config_file)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config()
    except Exception:  # pylint: disable=broad-except
      config = None
    for a in argv:
      if not a.startswith('--config.'):
        continue
      key = a[len('--config.'):].split('=', 1)[0]
      node, parts = config, key.split('.')
      for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          parent = '.'.join(['config'] + parts[:depth])
          known = ', '.join(sorted(node.keys())) if isinstance(
              node, ml_collections.ConfigDict) else ''
          return f'unknown config key --config.{key}: {parent} has no field {part!r}' + (
              f' (known: {known})' if known else '')
        node = node[part]
  message = str(error).strip().splitlines()[0]
  bad_bool = re.match(r"flag (--\S+?)=(.*): \('Non-boolean argument to boolean flag', .*\)$",
                      message)
  if bad_bool:
    return f'{bad_bool[1]}={bad_bool[2]}: expected a boolean (True or False)'
  return message


def load_config_file(config_file: str) -> None:
  """Runs `config_file`'s get_config() once; ConfigError (one line) if the file is broken.

  ml_collections would otherwise print the whole traceback of a syntax error or a raising
  get_config.
  """
  try:
    spec = importlib.util.spec_from_file_location('jaxreid_user_config', config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'--config={config_file}: no get_config() function (expected a config '
                        'file like configs/synthetic.py)')
    module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f'--config={config_file}: syntax error at line {e.lineno}: {e.msg}') from e
  except Exception as e:  # pylint: disable=broad-except
    # Whatever the file raises, the user needs the file, the line and the error, not a traceback.
    tb = e.__traceback__
    line = None
    while tb is not None:
      if tb.tb_frame.f_code.co_filename == str(config_file) or pathlib.Path(
          tb.tb_frame.f_code.co_filename).resolve() == pathlib.Path(config_file).resolve():
        line = tb.tb_lineno
      tb = tb.tb_next
    where = f' (line {line})' if line else ''
    text = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConfigError(f'--config={config_file}: loading it failed{where}: '
                      f'{type(e).__name__}{": " + text if text else ""}') from e


def validate_devices(c: ml_collections.ConfigDict, num_devices: int) -> None:
  """Refuses batch sizes the devices cannot split evenly, before any data is built."""
  keys = ['train.batch_size', 'eval.batch_size']
  if c.camstyle.enabled and not c.camstyle.oracle:
    keys.append('camstyle.batch_size')
  for key in keys:
    v = c[key.split('.')[0]][key.split('.')[1]]
    _check(v % num_devices == 0, key, v,
           f'a multiple of the {num_devices} devices (each device takes an equal share of a batch)')


def _check(ok: bool, key: str, value, expected: str):
  if not ok:
    raise ConfigError(f'config.{key}={value!r}: expected {expected}')


_DATASETS = ('synthetic', 'market1501', 'dukemtmc_reid', 'msmt17', 'folder')
_ARCHS = ('tiny', 'resnet18', 'resnet34', 'resnet50', 'efficientnet_lite0')


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line, naming the key) for values that make no sense."""
  _check(c.data.name in _DATASETS, 'data.name', c.data.name, f'one of {_DATASETS}')
  _check(c.data.name == 'synthetic' or not c.camstyle.oracle, 'camstyle.oracle',
         c.camstyle.oracle, "False unless config.data.name='synthetic' (only the "
         'synthetic generator can re-render an image under another camera)')
  _check(c.data.name in ('synthetic',) or bool(c.data.root), 'data.root', c.data.root,
         f'the folder of the {c.data.name} data set (download it by hand; see README)')
  for key in ('data.height', 'data.width', 'train.batch_size', 'camstyle.batch_size',
              'camstyle.height', 'camstyle.width', 'eval.batch_size', 'cluster.topk',
              'cluster.block_size', 'synthetic.num_cameras', 'synthetic.num_train_ids',
              'synthetic.num_test_ids', 'synthetic.images_per_id', 'model.embedding_dim',
              'camstyle.n_critic'):
    v = c[key.split('.')[0]][key.split('.')[1]]
    _check(v > 0, key, v, 'a positive integer')
  _check(0.0 < c.cluster.merge_percent < 1.0, 'cluster.merge_percent', c.cluster.merge_percent,
         'a fraction in (0, 1), e.g. 0.05')
  _check(c.cluster.size_penalty >= 0.0, 'cluster.size_penalty', c.cluster.size_penalty,
         'a non-negative weight, e.g. 0.003')
  _check(c.memory.temperature > 0.0, 'memory.temperature', c.memory.temperature,
         'a positive temperature, e.g. 0.1')
  _check(0.0 <= c.model.dropout < 1.0, 'model.dropout', c.model.dropout, 'a rate in [0, 1)')
  _check(c.model.arch in _ARCHS, 'model.arch', c.model.arch, f'one of {_ARCHS}')
  _check(c.model.dtype in ('float32', 'bfloat16'), 'model.dtype', c.model.dtype,
         "'float32' or 'bfloat16'")
  _check(c.cluster.matmul_dtype in ('float32', 'bfloat16'), 'cluster.matmul_dtype',
         c.cluster.matmul_dtype, "'float32' or 'bfloat16'")
  _check(c.cluster.features_on_device in ON_DEVICE_SETTINGS, 'cluster.features_on_device',
         c.cluster.features_on_device,
         f"{', '.join(map(repr, ON_DEVICE_SETTINGS[:-1]))} or {ON_DEVICE_SETTINGS[-1]!r}")
  _check(c.train.real_prob <= 1.0, 'train.real_prob', c.train.real_prob,
         'a probability in [0, 1], or < 0 for uniform over the support set')
  for key in ('train.step0_lr', 'train.later_lr', 'camstyle.g_lr', 'camstyle.d_lr'):
    v = c[key.split('.')[0]][key.split('.')[1]]
    _check(v > 0.0, key, v, 'a positive learning rate')
  _check(c.synthetic.num_cameras >= 2, 'synthetic.num_cameras', c.synthetic.num_cameras,
         'at least 2 cameras (each identity must be seen by two)')
  _check(c.data.crop_area_min <= c.data.crop_area_max, 'data.crop_area_min',
         c.data.crop_area_min, f'at most data.crop_area_max={c.data.crop_area_max}')
  _check(c.train.step0_epochs >= 0 and c.train.later_epochs >= 0, 'train.step0_epochs',
         (c.train.step0_epochs, c.train.later_epochs), 'non-negative epoch counts')
  _validate_density(c)


_METHODS = ('bottom_up', 'density')


def _validate_density(c: ml_collections.ConfigDict) -> None:
  """The density head's fields (config.density), checked whichever method runs."""
  _check(c.cluster.method in _METHODS, 'cluster.method', c.cluster.method, f'one of {_METHODS}')
  d = c.density
  _check(d.eps > 0.0, 'density.eps', d.eps, 'a positive DBSCAN radius, e.g. 0.6')
  for key in ('k1', 'k2', 'min_samples', 'instances', 'batch_size', 'iters_per_epoch', 'epochs',
              'lr_step_epochs', 'eval_every'):
    _check(d[key] >= 1, f'density.{key}', d[key], 'a positive integer')
  _check(d.k2 <= d.k1, 'density.k2', d.k2, f'at most density.k1={d.k1}')
  _check(d.instances <= d.batch_size and d.batch_size % d.instances == 0, 'density.instances',
         d.instances, f'a divisor of density.batch_size={d.batch_size} (P x K batches)')
  _check(d.temperature > 0.0, 'density.temperature', d.temperature,
         'a positive temperature, e.g. 0.05')
  _check(0.0 <= d.memory_momentum < 1.0, 'density.memory_momentum', d.memory_momentum,
         'a momentum in [0, 1), e.g. 0.1')
  _check(d.lr > 0.0, 'density.lr', d.lr, 'a positive learning rate')
  _check(d.pooling in ('avg', 'gem'), 'density.pooling', d.pooling, "'avg' or 'gem'")
  _check(d.gem_p > 0.0, 'density.gem_p', d.gem_p, 'a positive exponent, e.g. 3')
  if c.data.name == 'synthetic':
    n = c.synthetic.num_train_ids * c.synthetic.images_per_id
    _check(d.instances <= c.synthetic.images_per_id, 'density.instances', d.instances,
           f'at most synthetic.images_per_id={c.synthetic.images_per_id} (no cluster of '
           f'{n} images can give more distinct images of one identity)')
