"""2 processes x 4 CPU devices (jax.distributed on localhost) give the labels and metrics of 1 x 8."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import tiny_config

# A short training without the StarGAN, at the paper's learning rates: what is under test is the
# data-parallel re-ID loop, the host-side merge on every process and the primary-only records.
# Cross-process all-reduces (gloo) add in another order than in-process ones: a float32 difference
# of ~1e-7 per step, which SGD at these rates amplifies step by step (as it would any two reduction
# orders; tests/test_reid_train.py measures that spread). So the first steps' losses are compared
# with a tolerance, and what does not depend on rounding (the schedule, the number of clusters
# after every merge, the records) exactly; which pairs merge later may differ.
SHORT = tiny_config.cli_args() + ['--config.camstyle.enabled=False', '--config.train.log_every=1']
# Relative loss tolerance over the first FIRST_STEPS steps: rounding moves them by ~1e-6.
FIRST_STEPS, LOSS_RTOL = 3, 1e-4


def _env(devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _metrics(workdir):
  return [json.loads(l) for l in (workdir / 'reid' / 'metrics.jsonl').read_text().splitlines()]


def _outcome(workdir):
  results = json.loads((workdir / 'results.json').read_text())
  labels = {p.name: np.load(p) for p in sorted((workdir / 'reid' / 'labels').glob('*.npy'))}
  return results, labels


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / 'single'
  proc = subprocess.run([sys.executable, '-m', 'jaxreid.main', f'--workdir={single}', *SHORT],
                        cwd=tiny_config.REPO, env=_env(8), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'jaxreid.main', f'--workdir={multi}', *SHORT,
       '--config.distributed=True', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'],
      cwd=tiny_config.REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  want_results, want_labels = _outcome(single)
  results, labels = _outcome(multi)
  losses = [[r['train/loss'] for r in _metrics(w) if 'train/loss' in r] for w in (single, multi)]
  assert len(losses[1]) == len(losses[0]) == 5 * 2 + 5 + 5   # 40 images / 8 per batch, 4 epochs
  assert losses[1][:FIRST_STEPS] == pytest.approx(losses[0][:FIRST_STEPS], rel=LOSS_RTOL)
  assert labels.keys() == want_labels.keys() and len(want_labels) == 2
  for name in want_labels:   # the same number of clusters, labelled 0..C-1
    assert np.array_equal(np.unique(labels[name]), np.unique(want_labels[name])), name
  assert [s['clusters'] for s in results['steps']] == [s['clusters'] for s in want_results['steps']]
  assert results.keys() == want_results.keys()


@pytest.mark.slow
def test_two_processes_keep_support_features_on_the_devices():
  """cluster.features_on_device=True across processes: 'auto' keeps the host path there, so this
  is what says the device path holds too (features, labels and errors of the host path)."""
  port = _free_port()
  script = str(tiny_config.REPO / 'tests' / 'device_merge_process.py')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(tiny_config.REPO), os.environ.get('PYTHONPATH', '')) if p))
  procs = [subprocess.Popen([sys.executable, script, str(i), str(port)], cwd=tiny_config.REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and 'DONE' in out, err[-3000:]
