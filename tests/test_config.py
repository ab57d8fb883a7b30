"""Config files load, share one set of fields, and bad overrides fail with one clear line."""

import pathlib
import re
import subprocess
import sys

import pytest
from flax import traverse_util

from jaxreid import configlib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ['synthetic', 'market1501', 'dukemtmc_reid', 'msmt17', 'folder']


def _load(name):
  return configlib.load_sibling(str(REPO / 'configs' / 'x.py'), name).get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_loads_and_names_its_data_set(name):
  c = _load(name)
  assert c.data.name == name
  c.data.root = '/somewhere'
  configlib.validate(c)


@pytest.mark.parametrize('name', CONFIGS)
def test_data_set_configs_have_exactly_the_fields_of_common(name):
  """A data set config overrides values of common.py and adds no field of its own, so every
  override and ablation key means the same in every config."""
  flat = lambda c: set(traverse_util.flatten_dict(c.to_dict()))  # noqa: E731
  assert flat(_load(name)) == flat(_load('common'))


@pytest.mark.parametrize('key,value,expected', [
    ('cluster.merge_percent', 1.5, 'fraction in (0, 1)'),
    ('cluster.size_penalty', -1.0, 'non-negative'),
    ('model.arch', 'vgg', 'one of'),
    ('train.batch_size', 0, 'positive integer'),
    ('synthetic.num_cameras', 1, 'at least 2 cameras'),
    ('cluster.features_on_device', 'yes', "'auto', 'True' or 'False'"),
])
def test_nonsensical_values_are_refused_naming_the_key(key, value, expected):
  c = _load('synthetic')
  section, field = key.split('.')
  c[section][field] = value
  with pytest.raises(configlib.ConfigError, match=re.escape(expected)) as e:
    configlib.validate(c)
  assert f'config.{key}=' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('value', ['auto', 'True', 'False'])
def test_features_on_device_takes_auto_or_a_boolean_word(value):
  c = _load('synthetic')
  c.cluster.features_on_device = value   # what --config.cluster.features_on_device=True sets
  configlib.validate(c)


def test_real_data_set_without_root_is_refused():
  c = _load('market1501')
  with pytest.raises(configlib.ConfigError, match='data.root'):
    configlib.validate(c)


@pytest.mark.parametrize('override,expected', [
    ('--config.cluster.no_such_field=1', "unknown config key --config.cluster.no_such_field"),
    ('--config.nosection.x=1', "unknown config key --config.nosection.x"),
    ('--config.cluster.topk=many', '--config.cluster.topk=many'),
    ('--config.cluster.merge_percent=2', 'config.cluster.merge_percent=2.0: expected a fraction'),
])
def test_cli_reports_bad_override_in_one_line(tmp_path, override, expected):
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxreid.main', '--config=configs/synthetic.py',
       f'--workdir={tmp_path}', override],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert expected in lines[0]


def test_cli_reports_missing_config_file(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxreid.main', '--config=configs/nope.py', f'--workdir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip() == ('jaxreid: --config=configs/nope.py: no such config file '
                                 '(expected e.g. configs/synthetic.py)')


def test_oracle_fakes_are_refused_for_real_data():
  c = _load('market1501')
  c.data.root = '/data/market1501'
  c.camstyle.oracle = True
  with pytest.raises(configlib.ConfigError, match=r"config\.camstyle\.oracle=True: expected False "
                     r"unless config\.data\.name='synthetic'") as e:
    configlib.validate(c)
  assert '\n' not in str(e.value)
