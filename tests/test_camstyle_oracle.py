"""Oracle fakes (config.camstyle.oracle): the synthetic generator's re-renders replace the StarGAN."""

import numpy as np
import pytest

import tiny_config
from jaxreid import ablations, records, run_stages
from jaxreid.camstyle import store as store_lib
from jaxreid.camstyle.store import FakeStore
from jaxreid.data import synthetic


@pytest.fixture(scope='module')
def oracle_run(tmp_path_factory):
  c = tiny_config.config()
  c.camstyle.oracle = True
  workdir = tmp_path_factory.mktemp('oracle')
  return c, workdir, run_stages.run(c, str(workdir))


@pytest.mark.slow
def test_oracle_run_trains_no_stargan_and_stores_every_re_render(oracle_run):
  c, workdir, results = oracle_run
  marks = records.read_json(workdir / 'stages.json')
  assert 'camstyle_train' not in marks and marks['camstyle_generate']['oracle'] is True
  assert not (workdir / 'camstyle').exists()
  sets = run_stages.load_data(c, run_stages.RunPaths(workdir))
  store = FakeStore.open(workdir / 'fakes')
  s = c.synthetic
  params = synthetic.params_of(s)
  names = list(sets.train.file_names)
  assert store.num_images == len(names) and store.fakes_per_image == s.num_cameras - 1
  for i in (0, len(names) // 2, len(names) - 1):
    targets = store.target_cameras(i)
    expected = synthetic.render_in_cameras([names[i]], [targets], **params)[0]
    for t, want in zip(targets, expected):
      # The store keeps JPEGs: the same bytes as encoding the re-render at the configured quality.
      want = store_lib.decode(store_lib.encode(want, c.camstyle.fake_format, c.camstyle.jpeg_quality))
      np.testing.assert_array_equal(store.fake(i, t), want)
  assert len(results['steps']) == c.cluster.max_steps
  assert 0.0 <= results['rank1'] <= 1.0 and 0.0 <= results['mAP'] <= 1.0


@pytest.mark.slow
def test_finished_oracle_run_resumes_to_the_same_results(oracle_run):
  c, workdir, results = oracle_run
  assert run_stages.run(c, str(workdir)) == results


@pytest.mark.slow
def test_ablation_variants_share_the_oracle_fakes(tmp_path):
  c = tiny_config.config()
  c.camstyle.oracle = True
  c.cluster.max_steps = 1
  ablations.run_all(c, tmp_path, only=['full', 'no_clustering'])
  full, other = tmp_path / 'full' / 'fakes', tmp_path / 'no_clustering' / 'fakes'
  files = sorted(p.relative_to(full) for p in full.rglob('*') if p.is_file())
  assert files and files == sorted(p.relative_to(other) for p in other.rglob('*') if p.is_file())
  assert all((full / f).read_bytes() == (other / f).read_bytes() for f in files)
  marks = records.read_json(tmp_path / 'no_clustering' / 'stages.json')
  assert 'camstyle_train' not in marks and marks['camstyle_generate']['oracle'] is True
  assert not (tmp_path / 'no_clustering' / 'camstyle').exists()
