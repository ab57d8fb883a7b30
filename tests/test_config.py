"""Config files load, carry the reference defaults, and bad overrides fail with one clear line."""

import pathlib
import re
import subprocess
import sys

import pytest

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


def test_common_holds_the_reference_defaults():
  c = _load('common')
  assert (c.memory.temperature, c.cluster.merge_percent, c.cluster.size_penalty) == (0.1, 0.05, 0.003)
  assert (c.train.batch_size, c.train.momentum, c.train.weight_decay) == (16, 0.9, 5e-4)
  assert (c.train.step0_epochs, c.train.later_epochs, c.train.step0_lr, c.train.later_lr) == (
      20, 2, 0.1, 0.01)
  assert (c.data.height, c.data.width, c.model.embedding_dim, c.model.dropout) == (256, 128, 2048, 0.5)
  assert (c.camstyle.n_critic, c.camstyle.lambda_gp, c.camstyle.lambda_rec) == (5, 10.0, 10.0)
  assert c.model.arch == 'resnet50' and c.cluster.constraint and c.camstyle.enabled


def test_msmt17_uses_the_papers_batch_of_64():
  assert _load('msmt17').train.batch_size == 64


@pytest.mark.parametrize('key,value,expected', [
    ('cluster.merge_percent', 1.5, 'fraction in (0, 1)'),
    ('cluster.size_penalty', -1.0, 'non-negative'),
    ('model.arch', 'vgg', 'one of'),
    ('train.batch_size', 0, 'positive integer'),
    ('synthetic.num_cameras', 1, 'at least 2 cameras'),
])
def test_nonsensical_values_are_refused_naming_the_key(key, value, expected):
  c = _load('synthetic')
  section, field = key.split('.')
  c[section][field] = value
  with pytest.raises(configlib.ConfigError, match=re.escape(expected)) as e:
    configlib.validate(c)
  assert f'config.{key}=' in str(e.value) and '\n' not in str(e.value)


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
