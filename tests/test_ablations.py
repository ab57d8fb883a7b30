"""The paper's ablations are config overrides that change what their names say and nothing else."""

import json
import pathlib

import numpy as np
import pytest
from flax import traverse_util

import tiny_config
from jaxreid import ablations, records, run_stages


def _flat(config) -> dict:
  return traverse_util.flatten_dict(config.to_dict(), sep='.')


def _changed(config, base) -> dict:
  """key -> new value of every field where `config` differs from `base`."""
  a, b = _flat(config), _flat(base)
  assert a.keys() == b.keys()
  return {k: a[k] for k in a if a[k] != b[k]}


def test_each_variant_changes_only_its_own_fields():
  base = tiny_config.config()
  out = ablations.variants(base)
  assert list(out) == list(ablations.DEFAULT_ABLATIONS)
  total = base.train.step0_epochs + (base.cluster.max_steps - 1) * base.train.later_epochs
  assert total == 2 + 2 * 1   # the full run's 3 steps: 2 + 1 + 1 epochs
  expected = {
      'full': {},
      'no_clustering': {'cluster.enabled': False, 'train.step0_epochs': total,
                        # two thirds in, as the paper's decay after 40 of 60 epochs
                        'train.step0_lr_decay_epoch': round(total * 2 / 3)},
      'no_style_transfer': {'camstyle.enabled': False},
      'no_diversity': {'cluster.size_penalty': 0.0},
      'no_constraint': {'cluster.constraint': False},
  }
  for name, (description, cfg) in out.items():
    assert description == ablations.ABLATIONS[name][0]
    assert _changed(cfg, base) == expected[name], name
  # The variants that keep the StarGAN settings share one StarGAN and its fakes.
  full = out['full'][1]
  assert [n for n, (_, c) in out.items() if ablations._same_camstyle(c, full)] == [  # pylint: disable=protected-access
      'full', 'no_clustering', 'no_diversity', 'no_constraint']


def test_a_shared_stargan_is_copied_with_its_stage_marks(tmp_path):
  donor, target = tmp_path / 'full', tmp_path / 'no_diversity'
  for sub, name in (('camstyle', 'checkpoint'), ('fakes', 'index.json')):
    (donor / sub).mkdir(parents=True)
    (donor / sub / name).write_text(sub)
  tracker = run_stages.StageTracker(donor)
  tracker.mark('camstyle_train', {'iters': 6})
  tracker.mark('camstyle_generate', {'num_fakes': 80})
  target.mkdir()
  ablations._share_camstyle(donor, target)  # pylint: disable=protected-access
  assert (target / 'camstyle' / 'checkpoint').read_text() == 'camstyle'
  assert (target / 'fakes' / 'index.json').read_text() == 'fakes'
  marks = records.read_json(target / 'stages.json')
  assert marks == {'camstyle_train': {'iters': 6}, 'camstyle_generate': {'num_fakes': 80}}


@pytest.mark.slow
def test_a_variant_runs_and_is_tabled(tmp_path):
  rows = ablations.run_all(tiny_config.config(), tmp_path, only=['no_style_transfer'])
  assert [r['variant'] for r in rows] == ['no_style_transfer']
  assert '| w/o style transfer |' in (tmp_path / 'table.md').read_text()
  marks = records.read_json(tmp_path / 'no_style_transfer' / 'stages.json')
  assert 'camstyle_train' not in marks and not (tmp_path / 'no_style_transfer' / 'fakes').exists()
  # Clusters shrink by m = int(N * mp) = int(40 * 0.2) per merge.
  assert [s['clusters'] for s in rows[0]['steps']] == [40, 32, 24]
  saved = json.loads((tmp_path / 'no_style_transfer' / 'config.json').read_text())
  assert saved['camstyle']['enabled'] is False


def test_unknown_ablation_and_bad_sweep_fail_in_one_line():
  with pytest.raises(ablations.configlib.ConfigError, match='unknown ablation'):
    ablations.variants(tiny_config.config(), only=['no_such'])
  with pytest.raises(ablations.configlib.ConfigError, match='unknown config key cluster.nope'):
    ablations.variants(tiny_config.config(), sweep='cluster.nope=1,2')
  with pytest.raises(ablations.configlib.ConfigError, match='cluster.constraint=') as e:
    ablations.variants(tiny_config.config(), sweep='cluster.constraint=maybe')
  assert '\n' not in str(e.value)


def test_sweep_makes_one_full_run_per_value():
  out = ablations.variants(tiny_config.config(), sweep='cluster.merge_percent=0.1,0.2')
  assert [c.cluster.merge_percent for _, c in out.values()] == [0.1, 0.2]
  out = ablations.variants(tiny_config.config(), sweep='cluster.constraint=false,True')
  assert [c.cluster.constraint for _, c in out.values()] == [False, True]


def test_reference_variants_train_on_nothing_or_on_the_true_identities_for_the_full_length():
  base = tiny_config.config()
  out = ablations.variants(base, only=['raw_pixels', 'untrained', 'true_identities'])
  assert list(out) == ['untrained', 'true_identities']   # raw pixels is a row, not a run
  total = ablations.total_epochs(base)
  assert _changed(out['untrained'][1], base) == {
      'camstyle.enabled': False, 'cluster.enabled': False, 'train.step0_epochs': 0}
  assert _changed(out['true_identities'][1], base) == {
      'train.true_identities': True, 'cluster.enabled': False, 'train.step0_epochs': total,
      'train.step0_lr_decay_epoch': round(total * 2 / 3)}
  # The upper bound trains on the same support sets: it shares the full run's StarGAN.
  assert ablations._same_camstyle(out['true_identities'][1], base)  # pylint: disable=protected-access


def test_table_rows_follow_the_request_with_the_full_runs_step0_after_it(tmp_path, monkeypatch):
  def result(value, steps):
    metrics = {k: value for k in ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP')}
    return {**metrics, 'steps': [{'step': s, 'clusters': 10 - s, **{k: value + s / 100
                                                                       for k in metrics}}
                                 for s in range(steps)]}
  runs = {'full': result(0.5, 3), 'no_clustering': result(0.3, 1)}
  monkeypatch.setattr(run_stages, 'run', lambda cfg, workdir: runs[pathlib.Path(workdir).name])
  monkeypatch.setattr(ablations, 'raw_pixel_metrics', lambda cfg, workdir: result(0.1, 0))
  rows = ablations.run_all(tiny_config.config(), tmp_path,
                           only=['raw_pixels', 'full', 'no_clustering'])
  assert [r['variant'] for r in rows] == ['raw_pixels', 'full', 'full_step0', 'no_clustering']
  assert rows[2]['rank1'] == 0.5 and rows[1]['rank1'] == 0.5 and rows[3]['mAP'] == 0.3
  table = (tmp_path / 'table.md').read_text()
  assert '| step 0 alone (the full run before its first merge) | 50.0 |' in table


def test_raw_pixel_row_is_retrieval_on_mean_subtracted_pixels(tmp_path):
  """Against the distance-matrix evaluation of the same baseline computed here with numpy."""
  from jaxreid import evaluation
  from jaxreid.data import augment
  from jaxreid.loops.common import metrics_of
  config = tiny_config.config()
  config.data.tfds_dir = str(tmp_path / 'tfds')
  row = ablations.raw_pixel_metrics(config, tmp_path)
  sets = run_stages.load_data(config, run_stages.RunPaths(tmp_path))
  size = (config.data.height, config.data.width)

  def pixels(split):
    return np.stack([augment.resize(split.image(i), *size) for i in range(len(split))]
                    ).reshape(len(split), -1).astype(np.float64)
  mean = pixels(sets.train).mean(0)
  q, g = (pixels(s) - mean for s in (sets.query, sets.gallery))
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  dist = (q ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None] - 2 * q @ g.T
  want = metrics_of(evaluation.evaluate(dist, sets.query.pids, sets.gallery.pids,
                                        sets.query.camids, sets.gallery.camids, max_rank=50))
  assert row.keys() == want.keys()
  for k in row:
    assert row[k] == pytest.approx(want[k], abs=1e-6), k
