"""The paper's ablations run as config overrides and do what their names say."""

import json

import jax
import pytest

import tiny_config
from jaxreid import ablations, records


@pytest.fixture(scope='module')
def ablation_runs(tmp_path_factory):
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  workdir = tmp_path_factory.mktemp('ablations')
  rows = ablations.run_all(tiny_config.config(), workdir)
  return workdir, {r['variant']: r for r in rows}


@pytest.mark.slow
def test_every_ablation_runs_and_is_tabled(ablation_runs):
  workdir, rows = ablation_runs
  assert set(rows) == set(ablations.DEFAULT_ABLATIONS)
  table = (workdir / 'table.md').read_text()
  for description, _ in (ablations.ABLATIONS[k] for k in ablations.DEFAULT_ABLATIONS):
    assert f'| {description} |' in table
  for row in rows.values():
    assert 0.0 <= row['mAP'] <= 1.0 and 0.0 <= row['rank1'] <= row['rank5'] <= 1.0


@pytest.mark.slow
def test_without_clustering_trains_one_long_step(ablation_runs):
  workdir, rows = ablation_runs
  steps = rows['no_clustering']['steps']
  n = rows['full']['steps'][0]['clusters']
  assert [s['clusters'] for s in steps] == [n]
  cfg = json.loads((workdir / 'no_clustering' / 'config.json').read_text())
  assert cfg['train']['step0_epochs'] == 2 + 2 * 1   # the full run's 3 steps: 2 + 1 + 1 epochs
  assert cfg['train']['step0_lr_decay_epoch'] == 3   # two thirds in, as the paper's 40 of 60


@pytest.mark.slow
def test_without_style_transfer_makes_no_fakes(ablation_runs):
  workdir, rows = ablation_runs
  marks = records.read_json(workdir / 'no_style_transfer' / 'stages.json')
  assert 'camstyle_train' not in marks and not (workdir / 'no_style_transfer' / 'fakes').exists()
  assert len(rows['no_style_transfer']['steps']) == 3


@pytest.mark.slow
def test_variants_share_one_stargan_and_merge_differently(ablation_runs):
  workdir, rows = ablation_runs
  full = records.read_json(workdir / 'full' / 'stages.json')
  for name in ('no_diversity', 'no_constraint'):
    marks = records.read_json(workdir / name / 'stages.json')
    assert marks['camstyle_train'] == full['camstyle_train']
    cfg = json.loads((workdir / name / 'config.json').read_text())
    assert (cfg['cluster']['size_penalty'], cfg['cluster']['constraint']) == (
        (0.0, True) if name == 'no_diversity' else (tiny_config.config().cluster.size_penalty, False))
  # Clusters shrink by m = int(N * mp) per merge in every clustering variant.
  for name in ('full', 'no_diversity', 'no_constraint', 'no_style_transfer'):
    counts = [s['clusters'] for s in rows[name]['steps']]
    assert counts == [40, 32, 24], (name, counts)


def test_unknown_ablation_and_bad_sweep_fail_in_one_line():
  with pytest.raises(ablations.configlib.ConfigError, match='unknown ablation'):
    ablations.variants(tiny_config.config(), only=['no_such'])
  with pytest.raises(ablations.configlib.ConfigError, match='unknown config key'):
    ablations.variants(tiny_config.config(), sweep='cluster.nope=1,2')


def test_sweep_makes_one_full_run_per_value():
  out = ablations.variants(tiny_config.config(), sweep='cluster.merge_percent=0.1,0.2')
  assert [c.cluster.merge_percent for _, c in out.values()] == [0.1, 0.2]
