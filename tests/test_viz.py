"""The figures of jaxreid.viz, drawn from small work dirs the tests write (no training)."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxreid import viz
from jaxreid.configlib import load_sibling

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _png(path) -> np.ndarray:
  with Image.open(path) as im:
    assert im.format == 'PNG'
    return np.asarray(im.convert('RGB'))


def _assert_real_figure(path, min_size=(300, 150)):
  """A readable picture: big enough, and more than a blank page or a few flat colours."""
  px = _png(path)
  assert px.shape[1] >= min_size[0] and px.shape[0] >= min_size[1], px.shape
  assert px.std() > 10
  packed = (px[..., 0].astype(np.int32) << 16) | (px[..., 1].astype(np.int32) << 8) | px[..., 2]
  assert len(np.unique(packed)) > 50


def _steps(num, val=True):
  out = []
  for s in range(num):
    r = {'step': s, 'clusters': 64 - 16 * s, 'rank1': 0.2 + 0.1 * s, 'rank5': 0.4 + 0.1 * s,
         'rank10': 0.5 + 0.1 * s, 'rank20': 0.6 + 0.1 * s, 'mAP': 0.1 + 0.05 * s,
         'mINP': 0.05 + 0.02 * s, 'num_clusters': 64 - 16 * s, 'purity': 1 - 0.1 * s,
         'pairwise_precision': 1 - 0.2 * s, 'pairwise_recall': 0.1 * s, 'pairwise_f': 0.1 * s}
    if val:
      r['val'] = {k: r[k] - 0.01 for k in viz.METRIC_KEYS}
    out.append(r)
  return out


def _results(steps, best_step):
  best, last = steps[best_step], steps[-1]
  pick = lambda r: {'step': r['step'], 'clusters': r['clusters'],
                    **{k: r[k] for k in viz.METRIC_KEYS}}
  return {**{k: best[k] for k in viz.METRIC_KEYS}, 'best': {**pick(best), 'val': best['val']},
          'last': pick(last), 'steps': steps}


def _features(split_q, split_g, seed):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(len(split_q), 16))
  g = rng.normal(size=(len(split_g), 16))
  return {'query': q.astype(np.float16), 'gallery': g.astype(np.float16),
          'query_pids': split_q.pids, 'gallery_pids': split_g.pids,
          'query_camids': split_q.camids, 'gallery_camids': split_g.camids}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A finished run's records: config, results, features, data (tiny synthetic), fakes store."""
  from jaxreid import data
  from jaxreid import support_sets
  from jaxreid.camstyle import store as fake_store
  root = tmp_path_factory.mktemp('run')
  c = load_sibling(str(CONFIGS / 'synthetic.py'), 'synthetic').get_config()
  c.synthetic.num_train_ids, c.synthetic.num_test_ids, c.synthetic.images_per_id = 3, 5, 4
  c.synthetic.height, c.synthetic.width = 32, 16
  c.camstyle.sample_images = 3
  (root / 'config.json').write_text(c.to_json_best_effort())
  splits = data.load_splits(c.data, root / 'tfds', synthetic_config=c.synthetic)
  steps = _steps(3)
  (root / 'results.json').write_text(json.dumps(_results(steps, best_step=1)))
  feats = root / 'reid' / 'features'
  feats.mkdir(parents=True)
  for name, seed in (('first', 0), ('last', 1)):
    np.savez(feats / f'{name}.npz', **_features(splits['query'], splits['gallery'], seed))
  # A fakes store whose fakes are flat colours, one per target camera.
  train = splits['train']
  cams = train.num_cameras
  fake_store.write_index(root / 'fakes', train.camids, cams, 512, 'png')
  encoded = [fake_store.encode(np.full((32, 16, 3), 40 * k, np.uint8), 'png')
             for i in range(len(train)) for k in support_sets.target_cameras_of(train.camids[i], cams)]
  fake_store.write_chunk(fake_store.chunk_path(root / 'fakes', 0), encoded)
  return root


def test_plot_main_writes_every_figure_and_prints_their_paths(workdir, tmp_path, capsys):
  out = tmp_path / 'figs'
  assert viz.plot_main([f'--workdir={workdir}', f'--out={out}', '--embedding=tsne',
                        '--topk=5']) == 0
  printed = capsys.readouterr().out.split()
  assert sorted(printed) == sorted(str(out / f'{name}.png') for name in viz.FIGURES)
  for name in viz.FIGURES:
    _assert_real_figure(out / f'{name}.png')
  # Fig. 2 was drawn from the fakes store: its store cells show the flat fake colours.
  fig2 = _png(out / 'fig2_camstyle.png').reshape(-1, 3)
  for k in range(1, 4):
    assert np.any(np.all(fig2 == 40 * k, axis=1)), f'no fake of camera {k} in Fig. 2'


def test_default_out_is_workdir_figures_and_existing_fig2_is_reused(workdir, tmp_path):
  import shutil
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  drawn = run / 'camstyle' / 'fig2_camstyle.png'
  drawn.parent.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), np.uint8)).save(drawn)
  shutil.rmtree(run / 'fakes')  # not needed when the camstyle stage drew the figure already
  written = viz.plot_run(run, method='pca', num_queries=2, topk=3, log=None)
  assert set(written) == set(viz.FIGURES)
  assert all(p.parent == run / 'figures' for p in written.values())
  assert (run / 'figures' / 'fig2_camstyle.png').read_bytes() == drawn.read_bytes()


def test_unfinished_run_draws_what_its_records_allow(workdir, tmp_path):
  run = tmp_path / 'run'
  (run / 'reid' / 'features').mkdir(parents=True)
  c = json.loads((workdir / 'config.json').read_text())
  c['camstyle']['enabled'] = False
  (run / 'config.json').write_text(json.dumps(c))
  rows = [{'step': 0, 'test/rank1': 0.1, 'test/mAP': 0.05, 'test/clusters': 40.0},
          {'step': 0, 'val/rank1': 0.2, 'val/mAP': 0.1}]
  (run / 'reid' / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (run / 'reid' / 'features' / 'first.npz').write_bytes(
      (workdir / 'reid' / 'features' / 'first.npz').read_bytes())
  (run / 'tfds').symlink_to(workdir / 'tfds')
  (run / 'synthetic').symlink_to(workdir / 'synthetic')
  notes = []
  written = viz.plot_run(run, method='pca', num_queries=2, topk=3, log=notes.append)
  assert set(written) == {'fig7_steps', 'fig8_tsne', 'ranked_results'}
  assert any(n.startswith('results_table: skipped') for n in notes)
  assert any(n.startswith('fig2_camstyle: skipped') and 'camstyle.enabled=False' in n
             for n in notes)


def test_steps_from_metrics_keeps_the_last_evaluation_of_a_step():
  rows = [{'step': 5, 'epoch/loss': 3.0},
          {'step': 0, 'test/rank1': 0.1, 'test/mAP': 0.05, 'test/clusters': 40.0},
          {'step': 1, 'test/rank1': 0.2, 'test/mAP': 0.07, 'test/clusters': 30.0},
          {'step': 1, 'test/rank1': 0.3, 'test/mAP': 0.09, 'test/clusters': 30.0},  # resumed
          {'step': 1, 'val/rank1': 0.4, 'val/mAP': 0.2}]
  steps = viz.steps_from_metrics(rows)
  assert steps == [{'step': 0, 'rank1': 0.1, 'mAP': 0.05, 'clusters': 40},
                   {'step': 1, 'rank1': 0.3, 'mAP': 0.09, 'clusters': 30,
                    'val': {'rank1': 0.4, 'mAP': 0.2}}]


def test_results_markdown_lists_kept_and_last_model_in_percent():
  results = _results(_steps(3), best_step=1)
  lines = viz.results_markdown(results, 'market1501').splitlines()
  assert lines[0].startswith('| model | step | clusters | rank-1 |')
  kept = [c.strip() for c in lines[2].strip('|').split('|')]
  assert kept == ['kept model (best validation)', '1', '48', '30.0', '50.0', '60.0', '70.0',
                  '15.0', '7.0']
  last = [c.strip() for c in lines[3].strip('|').split('|')]
  assert last[:4] == ['last step', '2', '32', '40.0']
  assert '| paper, full | - | - | 73.7 | - | - | - | 38.0 | - |' in lines


def test_plot_main_errors_are_one_line_naming_the_path(tmp_path):
  for argv, expected in (([f'--workdir={tmp_path / "nope"}'], 'no such folder'),
                         ([f'--workdir={tmp_path}'], 'config.json: missing')):
    with pytest.raises(SystemExit) as e:
      viz.plot_main(argv)
    msg = str(e.value.code)
    assert msg.startswith('jaxreid plot: ') and expected in msg and '\n' not in msg


def _blob_data(seed, per=20, dim=30):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(3, dim)) * 4
  x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
  return x, np.repeat(np.arange(3), per)


def test_tsne_keeps_separated_clusters_apart_and_is_deterministic():
  x, y = _blob_data(0)
  e1, name = viz.embed_2d(x, seed=3)
  assert name == 't-SNE' and e1.shape == (60, 2) and np.all(np.isfinite(e1))
  np.testing.assert_array_equal(e1, viz.embed_2d(x, seed=3)[0])
  # Each point's 5 nearest neighbours in 2-D carry its own label.
  d = np.sum((e1[:, None] - e1[None]) ** 2, -1)
  np.fill_diagonal(d, np.inf)
  nn = np.argsort(d, 1)[:, :5]
  assert np.mean(y[nn] == y[:, None]) > 0.95


# ------------------------------------------------------------------------------- ranked results

def _ranked_case():
  """3 queries (cam 0) and 12 gallery items; gallery 0 is query 0's identity in its own camera,
  and the nearest item to it, so it must not be shown."""
  rng = np.random.default_rng(7)
  q_pid, q_cam = np.array([1, 2, 3]), np.array([0, 0, 0])
  g_pid = np.array([1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5])
  g_cam = np.array([0, 1, 2, 1, 2, 0, 1, 2, 1, 2, 1, 2])
  qf = rng.normal(size=(3, 8))
  centre = {1: qf[0], 2: qf[1], 3: qf[2], 4: rng.normal(size=8), 5: rng.normal(size=8)}
  gf = np.stack([centre[p] + rng.normal(scale=0.9, size=8) for p in g_pid])
  gf[0] = qf[0] + 1e-3
  return {'query': qf.astype(np.float32), 'gallery': gf.astype(np.float32), 'query_pids': q_pid,
          'gallery_pids': g_pid, 'query_camids': q_cam, 'gallery_camids': g_cam}


def _reference_ranking(feats, q, topk):
  d = [float(np.sum((feats['gallery'][g].astype(np.float64) - feats['query'][q]) ** 2))
       for g in range(len(feats['gallery']))]
  order = sorted(range(len(d)), key=lambda g: (d[g], g))
  keep = [g for g in order if not (feats['gallery_pids'][g] == feats['query_pids'][q] and
                                   feats['gallery_camids'][g] == feats['query_camids'][q])]
  return keep[:topk]


def _gallery_colour(g):
  return (100, 60 + 12 * g, 180)


def _query_colour(q):
  return (220, 200, 40 + 50 * q)


def _frames(px, colour):
  """(centre y, centre x, centre pixel colour) of each ring of `colour` in the picture."""
  mask = np.all(px == np.asarray(colour, np.uint8), axis=-1)
  labels, _ = ndimage.label(mask)
  out = []
  for sl in ndimage.find_objects(labels):
    cy, cx = (sl[0].start + sl[0].stop) // 2, (sl[1].start + sl[1].stop) // 2
    out.append((cy, cx, tuple(int(v) for v in px[cy, cx])))
  return out


def test_ranked_results_frame_true_matches_green_and_false_ones_red(tmp_path):
  feats = _ranked_case()
  topk = 6
  lists = viz.ranked_lists(feats, queries=[0, 1, 2], topk=topk)
  path = viz.plot_ranked(
      lists, feats, lambda q: np.full((48, 24, 3), _query_colour(q), np.uint8),
      lambda g: np.full((48, 24, 3), _gallery_colour(g), np.uint8), tmp_path / 'ranked.png')
  px = _png(path)
  by_colour = {_gallery_colour(g): g for g in range(12)}
  shown = []  # (row y, x, gallery index, frame colour)
  for name, colour in (('green', viz.GREEN), ('red', viz.RED)):
    for cy, cx, inside in _frames(px, colour):
      if inside in by_colour:  # the legend's swatches hold no gallery image
        shown.append((cy, cx, by_colour[inside], name))
  assert len(shown) == 3 * topk
  rows = sorted({cy for cy, *_ in shown})
  assert len(rows) == 3, rows  # the cells of a row share their centre line
  queries = sorted((cy, inside) for cy, _, inside in _frames(px, viz.QUERY_FRAME)
                   if inside in {_query_colour(q) for q in range(3)})
  assert [inside for _, inside in queries] == [_query_colour(q) for q in range(3)]
  for q, row_y in enumerate(rows):
    row = sorted((cx, g, name) for cy, cx, g, name in shown if cy == row_y)
    assert [g for _, g, _ in row] == _reference_ranking(feats, q, topk)
    for _, g, name in row:
      match = feats['gallery_pids'][g] == feats['query_pids'][q]
      assert name == ('green' if match else 'red'), (q, g)
  assert all(not (g == 0 and cy == rows[0]) for cy, _, g, _ in shown)  # same id and camera


def test_ranked_lists_default_picks_queries_with_a_true_match():
  feats = _ranked_case()
  feats['query_pids'] = np.array([1, 9, 3])  # query 1 has no match anywhere
  lists = viz.ranked_lists(feats, num_queries=5, topk=3)
  assert [r.query for r in lists] == [0, 2]
  for r in lists:
    assert len(r.gallery) == 3 and np.all(np.diff(r.distances) >= 0)
