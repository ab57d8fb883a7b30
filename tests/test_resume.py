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


def _run(workdir, kill_after=None, **env_vars):
  """The tiny run in `workdir`; with `kill_after`, SIGKILLed right after that durable write."""
  env = dict(os.environ, **env_vars)
  env.pop('XLA_FLAGS', None)  # the job itself runs on the default single CPU device
  env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
  entry = (['-m', 'jaxreid.main'] if kill_after is None else
           [str(REPO / 'tests' / 'kill_after_writes.py'), str(kill_after)])
  return subprocess.run([sys.executable, *entry, f'--workdir={workdir}', *tiny_config.cli_args()],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _chunks(workdir):
  return {p.name: p.read_bytes() for p in sorted((workdir / 'fakes' / 'chunks').glob('chunk_*'))}


def _final(workdir):
  from jaxreid.reid import export
  results = json.loads((workdir / 'results.json').read_text())
  variables, _ = export.load_model(workdir / 'model')
  return results, variables, _chunks(workdir)


def _assert_same_final(workdir, want):
  results, variables, chunks = _final(workdir)
  want_results, want_variables, want_chunks = want
  assert results == want_results
  assert chunks == want_chunks
  flat = dict(_leaves(variables))
  for path, value in _leaves(want_variables):
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


def _kill(workdir, kill_after):
  killed = _run(workdir, kill_after=kill_after)
  assert killed.returncode == -signal.SIGKILL, (
      f'the run did not reach write {kill_after}: {killed.stderr[-2000:]}')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(_chunks(workdir)) == 3
  return _final(workdir)


@pytest.mark.slow
# A tiny run makes 15 durable writes: StarGAN checkpoints 1-3, fakes chunks 4-6, re-ID 7-15
# (epochs, evaluations, merges). The kill points fall in the StarGAN and the fakes; the tests below
# kill re-ID training (writes 8 and 12) and resume it too.
@pytest.mark.parametrize('kill_after', [2, 5])
def test_killed_run_resumes_bit_identically(tmp_path, uninterrupted, kill_after):
  _kill(tmp_path, kill_after)
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_same_final(tmp_path, uninterrupted)


@pytest.mark.slow
def test_the_host_allocator_setting_does_not_change_results(tmp_path, uninterrupted):
  # The runs keep freed host memory for reuse (jaxreid.host_memory); glibc's default must give the
  # same bits.
  default = _run(tmp_path, JAXREID_KEEP_FREED_MEMORY='0')
  assert default.returncode == 0, default.stderr[-3000:]
  _assert_same_final(tmp_path, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'empty_meta'])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted,
                                                                  damage):
  _kill(tmp_path, 12)  # the 6th re-ID checkpoint
  ckpts = tmp_path / 'reid' / 'checkpoints'
  latest = max((p for p in ckpts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  if damage == 'truncated':
    biggest = max((p for p in (latest / 'state').rglob('*') if p.is_file()),
                  key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
  else:
    (latest / 'meta' / 'metadata').write_text('')
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'checkpoint {latest} is damaged' in resumed.stderr
  assert 'resuming from checkpoint' in resumed.stderr
  assert (tmp_path / 'reid' / 'checkpoints.damaged' / latest.name).is_dir()  # kept, not deleted
  _assert_same_final(tmp_path, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize('marks', ['kept', 'damaged'])
def test_missing_and_truncated_fakes_chunks_are_regenerated(tmp_path, uninterrupted,
                                                            marks):
  _kill(tmp_path, 8)  # in re-ID training, the fakes store finished
  from jaxreid.camstyle import store
  store.chunk_path(tmp_path / 'fakes', 1).unlink()
  truncated = store.chunk_path(tmp_path / 'fakes', 2)
  os.truncate(truncated, truncated.stat().st_size - 5)
  if marks == 'damaged':  # the stage marks lost as well: every stage resumes from its files
    (tmp_path / 'stages.json').write_text('{"camstyle_train": {"iter')
  resumed = _run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'regenerating what is missing' in resumed.stderr
  _assert_same_final(tmp_path, uninterrupted)


def test_deleted_fakes_store_is_regenerated_when_resuming(tmp_path):
  """The generation mark alone does not make a missing store count as done."""
  import shutil
  from jaxreid import run_stages
  from jaxreid.camstyle import store
  fakes = tmp_path / 'fakes'
  store.write_index(fakes, np.array([0, 1, 0], np.int32), 2, 2, 'png')
  image = np.zeros((4, 2, 3), np.uint8)
  for k, rows in enumerate(store.chunk_ranges(3, 2)):
    store.write_chunk(store.chunk_path(fakes, k), [store.encode(image, 'png')] * len(rows))
  tracker = run_stages.StageTracker(tmp_path)
  tracker.mark('camstyle_generate')
  paths = run_stages.RunPaths(tmp_path)
  run_stages._check_fakes(tracker, paths)  # pylint: disable=protected-access
  assert tracker.done('camstyle_generate')  # an intact store is kept
  shutil.rmtree(fakes)
  run_stages._check_fakes(tracker, paths)  # pylint: disable=protected-access
  assert not tracker.done('camstyle_generate')


def test_fakes_store_of_the_old_format_is_regenerated_when_resuming(tmp_path):
  """A v1 store (its own .bin chunks) is derived data of a format this version does not read:
  the check clears it and drops the generation mark, so the same command regenerates it."""
  from jaxreid import run_stages
  from jaxreid.camstyle import store
  fakes = tmp_path / 'fakes'
  store.write_index(fakes, np.array([0, 1, 0], np.int32), 2, 2, 'png')
  index = json.loads((fakes / 'index.json').read_text())
  (fakes / 'index.json').write_text(json.dumps({**index, 'format': 'jaxreid-fakes-v1'}))
  (fakes / 'chunks').mkdir()
  for k in range(2):
    (fakes / 'chunks' / f'chunk_{k:05d}.bin').write_bytes(b'old chunk')
  tracker = run_stages.StageTracker(tmp_path)
  tracker.mark('camstyle_generate')
  with pytest.raises(store.StoreError, match='old format .jaxreid-fakes-v1.*run the same command'):
    store.FakeStore.open(fakes)
  run_stages._check_fakes(tracker, run_stages.RunPaths(tmp_path))  # pylint: disable=protected-access
  assert not tracker.done('camstyle_generate')
  assert not (fakes / 'index.json').exists() and not list((fakes / 'chunks').iterdir())
  store.write_index(fakes, np.array([0, 1, 0], np.int32), 2, 2, 'png')  # starts afresh


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
