import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxreid import checkpoint, records, run_stages
from jaxreid.configlib import load_sibling

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _config():
  return load_sibling(str(CONFIGS / 'x.py'), 'synthetic').get_config()


def test_work_dir_refuses_another_config_listing_the_keys(tmp_path):
  c = _config()
  run_stages.check_or_save_config(tmp_path, c)
  run_stages.check_or_save_config(tmp_path, c)  # same config: resumes silently
  old_epochs = c.train.later_epochs
  c.cluster.size_penalty = 0.0
  c.train.later_epochs = old_epochs + 1
  with pytest.raises(run_stages.RunError) as e:
    run_stages.check_or_save_config(tmp_path, c)
  msg = str(e.value)
  assert 'cluster.size_penalty (0.003 -> 0.0)' in msg
  assert f'train.later_epochs ({old_epochs} -> {old_epochs + 1})' in msg
  assert '\n' not in msg
  run_stages.check_or_save_config(tmp_path, c, allow_change=True)
  run_stages.check_or_save_config(tmp_path, c)  # the new config is now the work dir's


def test_stage_marks_survive_reopening(tmp_path):
  run_stages.StageTracker(tmp_path).mark('camstyle_train', {'iters': 3})
  t = run_stages.StageTracker(tmp_path)
  assert t.done('camstyle_train') and not t.done('reid')
  assert t.summary('camstyle_train') == {'iters': 3}


def test_atomic_json_leaves_no_temp_files_and_plain_values(tmp_path):
  records.write_json_atomic(tmp_path / 'r.json', {'a': np.float32(0.5), 'b': np.arange(3)})
  assert records.read_json(tmp_path / 'r.json') == {'a': 0.5, 'b': [0, 1, 2]}
  assert [p.name for p in tmp_path.iterdir()] == ['r.json']


def test_metrics_writer_appends_json_lines_and_tensorboard_events(tmp_path):
  w = records.MetricsWriter(tmp_path)
  w.write(1, {'loss': np.float32(2.0), 'lr': 0.1})
  w.write(2, {'loss': 1.5})
  w.close()
  lines = records.read_metrics(tmp_path)
  assert [(l['step'], l['loss']) for l in lines] == [(1, 2.0), (2, 1.5)]
  assert any(p.name.startswith('events.out.tfevents') for p in (tmp_path / 'tb').iterdir())


def test_checkpoint_round_trip_with_meta(tmp_path):
  ck = checkpoint.Checkpointer(tmp_path / 'ckpt', max_to_keep=2)
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'labels': np.array([0, 0, 1])}
  for i in range(3):
    ck.save(i, jax_tree_add(state, i), {'step': i, 'best': None})
  assert ck.latest_index() == 2
  assert ck.restore_meta() == {'step': 2, 'best': None}
  restored = ck.restore(state)
  np.testing.assert_array_equal(restored['w'], np.arange(6.0).reshape(2, 3) + 2)
  np.testing.assert_array_equal(restored['labels'], [2, 2, 3])
  ck.close()
  assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['1', '2']


def jax_tree_add(tree, v):
  return {k: x + v for k, x in tree.items()}
