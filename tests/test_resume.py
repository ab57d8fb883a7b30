"""A run killed with SIGKILL at any point resumes to a bit-identical final result (on CPU)."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]



def _run(workdir, env_extra=None):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the job itself runs on the default single CPU device
  env.update(env_extra or {})
  return subprocess.run([sys.executable, '-m', 'jaxreid.main', f'--workdir={workdir}', *tiny_config.cli_args()],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _final(workdir):
  from jaxreid.reid import export
  results = json.loads((workdir / 'results.json').read_text())
  variables, _ = export.load_model(workdir / 'model')
  return results, variables


@pytest.fixture(scope='module')
def cache_env(tmp_path_factory):
  # One compilation cache for all runs of this module: restarts skip recompiling.
  return {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('xla_cache'))}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, cache_env):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  proc = _run(workdir, cache_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _final(workdir)


@pytest.mark.slow
# A tiny run makes 15 durable writes: StarGAN checkpoints 1-3, fakes chunks 4-6, re-ID 7-15
# (epochs, evaluations, merges). The kill points fall in each stage.
@pytest.mark.parametrize('kill_after', [2, 5, 10])
def test_killed_run_resumes_bit_identically(tmp_path, cache_env, uninterrupted, kill_after):
  killed = _run(tmp_path, {**cache_env, 'JAXREID_KILL_AFTER_WRITES': str(kill_after)})
  assert killed.returncode == -signal.SIGKILL, (
      f'the run did not reach write {kill_after}: {killed.stderr[-2000:]}')
  resumed = _run(tmp_path, cache_env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  results, variables = _final(tmp_path)
  want_results, want_variables = uninterrupted
  assert results == want_results
  flat = dict(_leaves(variables))
  for path, want in _leaves(want_variables):
    np.testing.assert_array_equal(flat[path], want, err_msg=path)


def test_finished_work_dir_prints_its_results(tmp_path):
  from jaxreid import records
  records.write_json_atomic(tmp_path / 'stages.json', {'final': {}})
  records.write_json_atomic(tmp_path / 'results.json',
                            {'rank1': 0.5, 'rank5': 0.75, 'rank10': 0.8, 'rank20': 0.9,
                             'mAP': 0.25, 'mINP': 0.1})
  proc = _run(tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'rank1 50.0 rank5 75.0 rank10 80.0 rank20 90.0 mAP 25.0 mINP 10.0' in proc.stdout


def _leaves(tree, prefix=''):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f'{prefix}/{k}')
  else:
    yield prefix, np.asarray(tree)
