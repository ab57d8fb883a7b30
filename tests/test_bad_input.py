"""Bad input as a user meets it on the command line: one line naming the thing, exit code 1.

Every case fails before any data is built (the work dirs hold no tfds/ afterwards), so each costs
about one interpreter start.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = str(REPO / 'configs' / 'synthetic.py')
RESULTS = {'rank1': 0.5, 'rank5': 0.75, 'rank10': 0.8, 'rank20': 0.9, 'mAP': 0.25, 'mINP': 0.1}


def _env():
  env = dict(os.environ)  # keeps the 8 host CPU devices of conftest.py
  env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
  env.pop('JAXREID_TRACEBACK', None)
  return env


def _jaxreid(args, cwd):
  return subprocess.run([sys.executable, '-m', 'jaxreid.main', *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=300)


def _tiny(workdir, *extra):
  args = [a.replace('configs/synthetic.py', SYNTHETIC) for a in tiny_config.cli_args()]
  return [f'--workdir={workdir}', *args, *extra]


def _finished(tmp: pathlib.Path, results=RESULTS) -> pathlib.Path:
  """A work dir whose run has finished (its records only)."""
  workdir = tmp / 'run'
  workdir.mkdir()
  (workdir / 'stages.json').write_text(json.dumps({'final': {}}))
  if results is not None:
    (workdir / 'results.json').write_text(json.dumps(results))
  return workdir


# Each case: set-up (tmp dir -> arguments), expected exit code, fragment of the last stderr line.
def _empty_workdir(tmp):
  return _tiny('')


def _workdir_is_a_file(tmp):
  (tmp / 'f').write_text('')
  return _tiny(tmp / 'f')


def _workdir_under_a_file(tmp):
  (tmp / 'f').write_text('')
  return _tiny(tmp / 'f' / 'run')


def _workdir_under_proc(tmp):
  return _tiny('/proc/jaxreid_run')


def _config_syntax_error(tmp):
  (tmp / 'bad.py').write_text('def get_config(:\n  pass\n')
  return [f'--workdir={tmp / "run"}', f'--config={tmp / "bad.py"}']


def _config_raises(tmp):
  (tmp / 'bad.py').write_text('def get_config():\n  raise RuntimeError("no such preset")\n')
  return [f'--workdir={tmp / "run"}', f'--config={tmp / "bad.py"}']


def _bool_override(tmp):
  return _tiny(tmp / 'run', '--config.camstyle.enabled=maybe')


def _batch(key, value):
  def case(tmp):
    return _tiny(tmp / 'run', f'--config.{key}={value}')
  return case


def _corrupt(name, text):
  def case(tmp):
    workdir = tmp / 'run'
    workdir.mkdir()
    (workdir / name).write_text(text)
    return _tiny(workdir)
  return case


def _finished_results_corrupt_no_copy(tmp):
  workdir = _finished(tmp, results=None)
  (workdir / 'results.json').write_text('{"rank1": 0.')
  return _tiny(workdir)


CASES = {
    'empty --workdir': (_empty_workdir, 1, '--workdir is empty'),
    'work dir is a file': (_workdir_is_a_file, 1, 'is a file: expected a folder'),
    'work dir under a file': (_workdir_under_a_file, 1, 'cannot be used: Not a directory'),
    'work dir under /proc': (_workdir_under_proc, 1, '--workdir=/proc/jaxreid_run cannot be used'),
    'config file syntax error': (_config_syntax_error, 1, 'bad.py: syntax error at line 1'),
    'config file raises': (_config_raises, 1,
                           'bad.py: loading it failed (line 2): RuntimeError: no such preset'),
    'bool override': (_bool_override, 1,
                      '--config.camstyle.enabled=maybe: expected a boolean'),
    'train batch vs devices': (_batch('train.batch_size', 12), 1,
                               'config.train.batch_size=12: expected a multiple of the 8 devices'),
    'camstyle batch vs devices': (_batch('camstyle.batch_size', 4), 1,
                                  'config.camstyle.batch_size=4: expected a multiple of the 8'),
    'eval batch vs devices': (_batch('eval.batch_size', 20), 1,
                              'config.eval.batch_size=20: expected a multiple of the 8'),
    'config.json not JSON': (_corrupt('config.json', '{"data": '), 1,
                             'config.json is damaged (not JSON'),
    'config.json null': (_corrupt('config.json', 'null'), 1, 'config.json is damaged'),
    'init checkpoint missing': (_batch('model.init_checkpoint', '/nonexistent/r50.msgpack'), 1,
                                "init_checkpoint='/nonexistent/r50.msgpack': no such file"),
    'named weights for another arch': (_batch('model.init_checkpoint', 'efficientnet_lite0'), 1,
                                       'holds the efficientnet_lite0 backbone, but'),
    'unknown cluster method': (_batch('cluster.method', 'kmeans'), 1,
                               "config.cluster.method='kmeans': expected one of"),
    'density eps zero': (_batch('density.eps', 0.0), 1,
                         'config.density.eps=0.0: expected a positive DBSCAN radius'),
    'density eps negative': (_batch('density.eps', -0.5), 1,
                             'config.density.eps=-0.5: expected a positive DBSCAN radius'),
    'density k2 above k1': (_batch('density.k2', 40), 1,
                            'config.density.k2=40: expected at most density.k1=20'),
    'density min_samples zero': (_batch('density.min_samples', 0), 1,
                                 'config.density.min_samples=0: expected a positive integer'),
    'density K not dividing the batch': (_batch('density.instances', 24), 1,
                                         'config.density.instances=24: expected a divisor of'),
    'density K above an identity': (_batch('density.instances', 8), 1,
                                    'config.density.instances=8: expected at most synthetic.'
                                    'images_per_id=4'),
    'finished, results.json damaged, no copy': (
        _finished_results_corrupt_no_copy, 1, 'cannot be rebuilt'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_gives_one_line(tmp_path, case):
  setup, code, fragment = CASES[case]
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  proc = _jaxreid([str(a) for a in setup(tmp_path)], cwd)
  assert proc.returncode == code, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines and lines[-1].startswith('jaxreid: '), proc.stderr[-3000:]
  assert fragment in lines[-1], lines[-1]
  assert list(cwd.iterdir()) == []  # nothing written where the command ran
  assert not (tmp_path / 'run' / 'tfds').exists()  # refused before any data was built


def test_finished_work_dir_keeps_its_config_under_allow_config_change(tmp_path):
  workdir = _finished(tmp_path)
  assert _jaxreid(_tiny(workdir), tmp_path).returncode == 0
  saved = (workdir / 'config.json').read_bytes()
  changed = _jaxreid(_tiny(workdir, '--config.train.later_epochs=7', '--allow_config_change'),
                     tmp_path)
  assert changed.returncode == 1, changed.stderr[-3000:]
  assert 'holds a finished run made with another config (differing keys: train.later_epochs)' in (
      changed.stderr.strip().splitlines()[-1])
  assert (workdir / 'config.json').read_bytes() == saved
  again = _jaxreid(_tiny(workdir), tmp_path)  # the original command still works
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'rank1 50.0' in again.stdout


@pytest.mark.parametrize('damage', ['deleted', 'empty'])
def test_finished_results_json_is_rebuilt_from_the_reid_record(tmp_path, damage):
  workdir = _finished(tmp_path)
  (workdir / 'reid').mkdir()
  (workdir / 'reid' / 'results.json').write_text(json.dumps(RESULTS))
  if damage == 'deleted':
    (workdir / 'results.json').unlink()
  else:
    (workdir / 'results.json').write_text('')
  proc = _jaxreid(_tiny(workdir), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'rank1 50.0 rank5 75.0' in proc.stdout
  assert json.loads((workdir / 'results.json').read_text()) == RESULTS


@pytest.mark.parametrize('text', ['', '{"camstyle_tr', '[]'])
def test_damaged_stage_marks_of_a_finished_run_are_set_aside(tmp_path, text):
  workdir = _finished(tmp_path)
  (workdir / 'stages.json').write_text(text)
  proc = _jaxreid(_tiny(workdir), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert 'stages.json is damaged' in proc.stderr and 'moved it to' in proc.stderr
  assert 'rank1 50.0 rank5 75.0' in proc.stdout
  assert (workdir / 'stages.json.damaged').read_text() == text  # kept for the user


def test_records_have_the_mode_of_other_files(tmp_path):
  from jaxreid import records
  records.write_json_atomic(tmp_path / 'r.json', {'a': 1})
  (tmp_path / 'plain').write_text('')
  assert (tmp_path / 'r.json').stat().st_mode == (tmp_path / 'plain').stat().st_mode


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_saying_how_to_resume(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.Popen([sys.executable, '-m', 'jaxreid.main', *_tiny(workdir)], cwd=tmp_path,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    while not (workdir / 'tfds').exists() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  # 130 (128 + SIGINT) from sys.exit, or killed by SIGINT where CPython re-raises the signal at
  # exit (it does when a C extension saw the KeyboardInterrupt first): a shell reports 130 for both.
  assert proc.returncode in (130, -signal.SIGINT), err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('jaxreid: interrupted') and 'run the same command again' in last
  assert (workdir / 'config.json').stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_work_dir_is_refused_before_anything_is_built(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    proc = _jaxreid(_tiny(workdir), tmp_path)
  finally:
    workdir.chmod(0o755)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert 'cannot be used: Permission denied' in proc.stderr.strip().splitlines()[-1]


def test_bad_file_name_warning_is_given_once_per_run(tmp_path):
  from test_data_layouts import TINY_MARKET, write_market

  from jaxreid import data, run_stages
  names = {k: list(v) for k, v in TINY_MARKET.items()}
  names['bounding_box_train'].append('holiday_photo.jpg')
  root = write_market(tmp_path / 'market', names)
  config = tiny_config.config()
  config.data.name, config.data.root = 'folder', str(root)
  config.validation.name = ''
  config.camstyle.enabled = False
  with pytest.warns(data.DataWarning) as record:
    run_stages.load_data(config, run_stages.RunPaths(tmp_path / 'run'))
  about_it = [w for w in record if 'holiday_photo.jpg' in str(w.message)]
  assert len(about_it) == 1, [str(w.message) for w in about_it]


def test_a_ctrl_c_that_python_swallows_still_stops_the_run(tmp_path):
  """A KeyboardInterrupt raised inside a destructor or gc callback (jax registers one) is only
  printed by Python; the run must still stop at its next safe point, without that traceback."""
  script = tmp_path / 'swallow.py'
  script.write_text(textwrap.dedent("""
      import os, signal, sys
      from jaxreid import interrupts
      interrupts.install()

      class Dropped:
        def __del__(self):
          os.kill(os.getpid(), signal.SIGINT)
          sum(range(100000))   # the handler runs here, inside __del__

      Dropped()
      print('went on', flush=True)
      try:
        interrupts.raise_if_pending()
      except KeyboardInterrupt:
        sys.exit(42)
      """))
  proc = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True,
                        timeout=120)
  assert proc.stdout == 'went on\n', proc.stderr   # Python did swallow it
  assert proc.returncode == 42, proc.stderr        # and the mark stopped the run
  assert 'Exception ignored' not in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
