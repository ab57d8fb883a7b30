"""The paper's figures, drawn from a run's records: `jaxreid plot --workdir=DIR [--out=DIR]`.

  fig2_camstyle.png    Fig. 2: originals and their camera-style fakes (the camstyle stage draws it
                       with `draw_camstyle` when it writes the fakes)
  fig7_steps.png       Fig. 7: test rank-1 / mAP and the number of clusters after every step, and
                       the clusters' quality against the true training identities
  fig8_tsne.png        Fig. 8: t-SNE of test features at the first and the last step, coloured by
                       true identity
  ranked_results.png   a few queries and their top-k gallery images, true matches framed green and
                       false ones red (torchreid's picture)
  results_table.png    the final table (also `results_markdown` for notebooks and READMEs)

Every figure is a function of records a run leaves in its work dir (results.json or, while a run is
still going, reid/metrics.jsonl; reid/features/{first,last}.npz; the data; the fakes store), so
figures can be redrawn at any time without touching the model. Figures are drawn on matplotlib
`Figure` objects without pyplot, so drawing never changes a notebook's backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxreid import atomic
from jaxreid.evaluation import METRIC_KEYS

FIGURES = ('fig2_camstyle', 'fig7_steps', 'fig8_tsne', 'ranked_results', 'results_table')
FEATURE_KEYS = ('query', 'gallery', 'query_pids', 'gallery_pids', 'query_camids', 'gallery_camids')
# Frame colours of ranked results, as torchreid draws them (pure, so they can be found in a PNG).
GREEN = (0, 255, 0)
RED = (255, 0, 0)
QUERY_FRAME = (0, 0, 0)
# What users compare against: the paper's own rank-1 / mAP in %, full and without style transfer
# (docs/method.md lists them).
PAPER_RESULTS = {
    'market1501': {'paper, full': (73.7, 38.0), 'paper, w/o style transfer': (61.0, 30.6)},
    'dukemtmc_reid': {'paper, full': (56.1, 30.6), 'paper, w/o style transfer': (40.2, 21.9)},
    'msmt17': {'paper, full': (31.4, 9.9), 'paper, w/o style transfer': (26.4, 9.2)},
}
_DATASET_NAMES = {'market1501': 'Market-1501', 'dukemtmc_reid': 'DukeMTMC-reID',
                  'msmt17': 'MSMT17', 'synthetic': 'synthetic', 'folder': 'folder data set'}


class VizError(ValueError):
  """A work dir lacks what a figure needs; the message is one line naming the file."""


# ------------------------------------------------------------------------------- records

@dataclasses.dataclass
class RunRecords:
  """What the figures read from one work dir (None where the run has not written it yet)."""
  root: pathlib.Path
  config: object
  results: dict | None
  steps: list[dict]
  first: dict | None
  last: dict | None

  @property
  def dataset(self) -> str:
    return str(self.config.data.name)


def load_features(path: str | pathlib.Path) -> dict:
  """A features file (reid/features/*.npz): float32 `query` / `gallery` plus pids and camids."""
  path = pathlib.Path(path)
  try:
    with np.load(path) as npz:
      missing = [k for k in FEATURE_KEYS if k not in npz.files]
      if missing:
        raise VizError(f'{path}: no {", ".join(missing)} in it (expected the arrays '
                       f'{", ".join(FEATURE_KEYS)})')
      out = {k: np.asarray(npz[k]) for k in FEATURE_KEYS}
  except (OSError, ValueError) as e:
    if isinstance(e, VizError):
      raise
    raise VizError(f'{path}: not a readable .npz features file ({e})') from None
  out['query'] = out['query'].astype(np.float32)
  out['gallery'] = out['gallery'].astype(np.float32)
  for side in ('query', 'gallery'):
    n = len(out[side])
    if out[side].ndim != 2 or len(out[f'{side}_pids']) != n or len(out[f'{side}_camids']) != n:
      raise VizError(f'{path}: {side} features, pids and camids disagree in length')
  return out


def steps_from_metrics(rows: Sequence[Mapping]) -> list[dict]:
  """Per-step records rebuilt from reid/metrics.jsonl (test/* and val/* rows), for unfinished runs."""
  by_step: dict[int, dict] = {}
  for row in rows:
    test = {k[5:]: v for k, v in row.items() if k.startswith('test/')}
    val = {k[4:]: v for k, v in row.items() if k.startswith('val/')}
    if test:
      # A resumed run may evaluate a step again: the later record wins.
      record = by_step[int(row['step'])] = {'step': int(row['step']), **test}
      if 'clusters' in record:
        record['clusters'] = int(record['clusters'])
    elif val and int(row['step']) in by_step:
      by_step[int(row['step'])]['val'] = val
  return [by_step[s] for s in sorted(by_step)]


def load_records(workdir: str | pathlib.Path) -> RunRecords:
  """Reads a work dir's config, results (or per-step metrics) and saved test features."""
  import ml_collections
  root = pathlib.Path(workdir)
  if not root.is_dir():
    raise VizError(f'--workdir={root}: no such folder (expected the work dir of a jaxreid run)')
  config_path = root / 'config.json'
  if not config_path.is_file():
    raise VizError(f'{config_path}: missing (expected the work dir of a jaxreid run)')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  results = _read_json(root / 'results.json') or _read_json(root / 'reid' / 'results.json')
  if results is not None:
    steps = list(results.get('steps', []))
  else:
    steps = steps_from_metrics(_read_jsonl(root / 'reid' / 'metrics.jsonl'))
  features = root / 'reid' / 'features'
  first = load_features(features / 'first.npz') if (features / 'first.npz').is_file() else None
  last = load_features(features / 'last.npz') if (features / 'last.npz').is_file() else None
  return RunRecords(root, config, results, steps, first, last)


def _read_json(path: pathlib.Path):
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise VizError(f'{path}: not valid JSON ({e})') from None


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a run killed mid-write leaves a partial last line
  return rows


# ------------------------------------------------------------------------------- drawing helpers

def _figure(width: float, height: float):
  from matplotlib.figure import Figure
  return Figure(figsize=(width, height), layout='constrained')


def _save(fig, path: pathlib.Path, dpi: int = 110) -> pathlib.Path:
  """Writes the PNG atomically (a reader never sees half a file)."""
  path = pathlib.Path(path)
  with atomic.writing(path) as tmp:
    fig.savefig(tmp, dpi=dpi)
  return path


def _dataset_label(name: str) -> str:
  return _DATASET_NAMES.get(name, name)


# ------------------------------------------------------------------------------- Fig. 7

def plot_steps(steps: Sequence[Mapping], path, *, dataset: str = '',
               kept_step: int | None = None,
               xlabel: str = 'step (merging iteration)') -> pathlib.Path:
  """Fig. 7: test rank-1 / mAP (and validation, if any) with the number of clusters per step;
  a second panel shows cluster quality when the records hold it."""
  if not steps:
    raise VizError('no evaluated step in the records (expected results.json or test/* rows in '
                   'reid/metrics.jsonl)')
  x = np.asarray([s['step'] for s in steps])
  quality = [k for k in ('purity', 'pairwise_precision', 'pairwise_recall', 'pairwise_f')
             if all(k in s for s in steps)]
  fig = _figure(11 if quality else 6.5, 4.8)
  axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]
  ax = axes[0]
  lines = [ax.plot(x, [100 * s['rank1'] for s in steps], 'o-', color='tab:blue',
                   label='test rank-1')[0],
           ax.plot(x, [100 * s['mAP'] for s in steps], 's-', color='tab:orange',
                   label='test mAP')[0]]
  if all('val' in s for s in steps):
    lines.append(ax.plot(x, [100 * s['val']['rank1'] for s in steps], 'o--', color='tab:blue',
                         alpha=0.5, label='validation rank-1')[0])
    lines.append(ax.plot(x, [100 * s['val']['mAP'] for s in steps], 's--', color='tab:orange',
                         alpha=0.5, label='validation mAP')[0])
  if kept_step is not None:
    lines.append(ax.axvline(kept_step, color='tab:green', ls=':', lw=1.5,
                            label=f'kept model (step {kept_step})'))
  ax.set_xlabel(xlabel)
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  if 'clusters' in steps[0]:
    twin = ax.twinx()
    lines.append(twin.plot(x, [s['clusters'] for s in steps], 'd:', color='tab:gray',
                           label='clusters')[0])
    twin.set_ylabel('number of clusters')
    twin.set_ylim(0, 1.05 * max(s['clusters'] for s in steps))
  ax.set_xticks(x)
  # Below the axes: inside, the twin axis would draw the cluster curve over it.
  ax.legend(handles=lines, loc='upper center', bbox_to_anchor=(0.5, -0.16), ncols=3, fontsize=8)
  ax.set_title('Re-ID accuracy and clusters per step')
  if quality:
    ax = axes[1]
    names = {'purity': 'purity', 'pairwise_precision': 'pairwise precision',
             'pairwise_recall': 'pairwise recall', 'pairwise_f': 'pairwise F'}
    for k, marker in zip(quality, 'os^d'):
      ax.plot(x, [100 * s[k] for s in steps], marker + '-', label=names[k])
    ax.set_xlabel(xlabel)
    ax.set_ylabel('%')
    ax.set_ylim(0, 105)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8)
    ax.set_title('Cluster quality vs. true training identities\n(reporting only; the method never '
                 'sees them)', fontsize=10)
  fig.suptitle(f'Fig. 7: performance after each step on {_dataset_label(dataset) or "the test set"}')
  return _save(fig, path)


# ------------------------------------------------------------------------------- Fig. 8: t-SNE

def embed_2d(x: np.ndarray, *, seed: int = 0, method: str = 'tsne') -> tuple[np.ndarray, str]:
  """(n, 2) embedding and the name of what made it: scikit-learn's t-SNE ('tsne'), or the two
  leading principal components ('pca')."""
  x = np.asarray(x, np.float64)
  if method not in ('tsne', 'pca'):
    raise VizError(f'embedding method {method!r}: expected tsne or pca')
  if method == 'pca' or len(x) < 4:
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T if vt.shape[0] >= 2 else np.zeros((len(x), 2)), 'PCA'
  from sklearn.manifold import TSNE
  perplexity = min(30.0, (len(x) - 1) / 3)
  y = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)
  return y, 't-SNE'


def pick_identities(pids: np.ndarray, max_ids: int, seed: int = 0) -> np.ndarray:
  """Up to `max_ids` identities with at least two images (junk -1 and distractors 0 left out),
  chosen by `seed`, ascending."""
  ids, counts = np.unique(pids, return_counts=True)
  ids = ids[(counts >= 2) & (ids > 0)]
  if len(ids) > max_ids:
    ids = np.sort(np.random.default_rng(seed).choice(ids, max_ids, replace=False))
  return ids


def plot_tsne(panels: Sequence[tuple[str, Mapping]], path, *, max_ids: int = 20, seed: int = 0,
              method: str = 'tsne', dataset: str = '') -> pathlib.Path:
  """Fig. 8: one t-SNE panel per (title, features) pair - query and gallery features of the same
  identities in every panel, coloured by true identity."""
  if not panels:
    raise VizError('no features to embed (expected reid/features/first.npz or last.npz)')
  feats0 = panels[0][1]
  pids = np.concatenate([feats0['query_pids'], feats0['gallery_pids']])
  ids = pick_identities(pids, max_ids, seed)
  if not len(ids):
    raise VizError('no test identity with two or more images to embed')
  keep = np.isin(pids, ids)
  is_query = np.arange(len(pids)) < len(feats0['query_pids'])
  colour_of = {pid: k for k, pid in enumerate(ids)}
  cmap = _identity_colours(len(ids))
  fig = _figure(5.2 * len(panels) + 1.6, 5.0)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  method_name = ''
  for ax, (title, feats) in zip(axes, panels):
    if not np.array_equal(np.concatenate([feats['query_pids'], feats['gallery_pids']]), pids):
      raise VizError(f'the features of "{title}" hold other images than those of '
                     f'"{panels[0][0]}" (expected the same test set)')
    x = np.concatenate([feats['query'], feats['gallery']])[keep]
    y, method_name = embed_2d(x, seed=seed, method=method)
    colours = cmap[[colour_of[p] for p in pids[keep]]]
    q = is_query[keep]
    ax.scatter(y[~q, 0], y[~q, 1], c=colours[~q], s=22, marker='o', edgecolors='none')
    ax.scatter(y[q, 0], y[q, 1], c=colours[q], s=40, marker='^', edgecolors='k', linewidths=0.4)
    ax.set_title(title)
    ax.set_xlabel(f'{method_name} 1')
    ax.set_ylabel(f'{method_name} 2')
    ax.set_xticks([])
    ax.set_yticks([])
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], ls='', marker='s', color=cmap[k], label=f'id {pid}')
             for k, pid in enumerate(ids)]
  handles += [Line2D([], [], ls='', marker='o', color='gray', label='gallery image'),
              Line2D([], [], ls='', marker='^', color='gray', mec='k', label='query image')]
  fig.legend(handles=handles, loc='outside right center', fontsize=7, title='true identity',
             title_fontsize=8, ncols=2 if len(ids) > 16 else 1)
  fig.suptitle(f'Fig. 8: {method_name} of test features, coloured by true identity '
               f'({len(ids)} identities, {int(keep.sum())} images'
               f'{", " + _dataset_label(dataset) if dataset else ""})')
  return _save(fig, path)


def _identity_colours(n: int) -> np.ndarray:
  from matplotlib import colormaps
  if n <= 10:
    return colormaps['tab10'](np.arange(n))[:, :3]
  if n <= 20:
    return colormaps['tab20'](np.arange(n))[:, :3]
  return colormaps['hsv'](np.linspace(0, 1, n, endpoint=False))[:, :3]


# ------------------------------------------------------------------------------- ranked results

@dataclasses.dataclass(frozen=True)
class RankedList:
  """One query's top-k gallery items (Market protocol: same id AND camera dropped)."""
  query: int
  gallery: np.ndarray   # gallery indices, best first
  matches: np.ndarray   # bool: same identity as the query
  distances: np.ndarray


def ranked_lists(feats: Mapping, *, num_queries: int = 4, topk: int = 10,
                 queries: Sequence[int] | None = None) -> list[RankedList]:
  """Top-k gallery items of `queries` (default: `num_queries` spread evenly over the queries that
  have a true match), by squared Euclidean distance, ties in gallery order."""
  qf, gf = feats['query'].astype(np.float32), feats['gallery'].astype(np.float32)
  q_pid, g_pid = feats['query_pids'], feats['gallery_pids']
  q_cam, g_cam = feats['query_camids'], feats['gallery_camids']
  if queries is None:
    valid = [i for i in range(len(qf))
             if np.any((g_pid == q_pid[i]) & (g_cam != q_cam[i]))]
    if not valid:
      raise VizError('no query has a true match in another camera; nothing to show')
    picks = np.linspace(0, len(valid) - 1, min(num_queries, len(valid))).round().astype(int)
    queries = [valid[k] for k in picks]
  g_sq = np.sum(gf * gf, 1)
  out = []
  for i in queries:
    i = int(i)
    if not 0 <= i < len(qf):
      raise VizError(f'query index {i}: expected 0..{len(qf) - 1}')
    d = np.maximum(np.sum(qf[i] ** 2) + g_sq - 2 * gf @ qf[i], 0)
    order = np.argsort(d, kind='stable')
    order = order[~((g_pid[order] == q_pid[i]) & (g_cam[order] == q_cam[i]))][:topk]
    out.append(RankedList(i, order, g_pid[order] == q_pid[i], d[order]))
  return out


def framed(image: np.ndarray, colour: Sequence[int], width: int) -> np.ndarray:
  """The image with a solid border of `colour` (uint8 RGB), drawn into the pixels as torchreid does."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  h, w = image.shape[:2]
  out = np.empty((h + 2 * width, w + 2 * width, 3), np.uint8)
  out[:] = np.asarray(colour, np.uint8)
  out[width:width + h, width:width + w] = image[..., :3]
  return out


def plot_ranked(lists: Sequence[RankedList], feats: Mapping, query_image: Callable[[int], np.ndarray],
                gallery_image: Callable[[int], np.ndarray], path, *, title: str = '') -> pathlib.Path:
  """Ranked retrieval: per row a query (black frame) and its top-k gallery images, framed green
  where the identity matches the query's and red where it does not."""
  if not lists:
    raise VizError('no ranked list to draw')
  topk = max(len(r.gallery) for r in lists)
  fig = _figure(1.0 * (topk + 1) + 0.6, 2.15 * len(lists) + 0.7)
  axes = fig.subplots(len(lists), topk + 1, squeeze=False)
  for row, r in zip(axes, lists):
    for ax in row:
      ax.set_axis_off()
    q = np.asarray(query_image(r.query))
    width = max(2, q.shape[0] // 24)
    row[0].imshow(framed(q, QUERY_FRAME, width), interpolation='nearest')
    row[0].set_title(f'query\nid {feats["query_pids"][r.query]}, cam '
                     f'{feats["query_camids"][r.query] + 1}', fontsize=8)
    for k, (g, match) in enumerate(zip(r.gallery, r.matches)):
      g_img = np.asarray(gallery_image(int(g)))
      row[k + 1].imshow(framed(g_img, GREEN if match else RED, max(2, g_img.shape[0] // 24)),
                        interpolation='nearest')
      row[k + 1].set_title(f'rank {k + 1}\nid {feats["gallery_pids"][g]}, cam '
                           f'{feats["gallery_camids"][g] + 1}', fontsize=7)
  from matplotlib.patches import Patch
  fig.legend(handles=[Patch(facecolor='white', edgecolor=np.asarray(GREEN) / 255, lw=3,
                            label='same identity (true match)'),
                      Patch(facecolor='white', edgecolor=np.asarray(RED) / 255, lw=3,
                            label='other identity (false match)'),
                      Patch(facecolor='white', edgecolor='black', lw=3, label='query')],
             loc='outside lower center', ncols=3, fontsize=8)
  fig.suptitle(title or 'Ranked retrieval results (same identity and camera as the query '
               'left out)', fontsize=10)
  return _save(fig, path, dpi=100)


# ------------------------------------------------------------------------------- final table

def results_rows(results: Mapping, dataset: str = '') -> list[tuple[str, dict]]:
  """(label, {metric: % or None, 'step', 'clusters'}) rows: the kept model, the last step, and
  the paper's numbers for the data sets it reports."""
  rows = []
  best, last = results.get('best'), results.get('last')
  if best is not None:
    kept = 'kept model (best validation)' if 'val' in best else 'kept model'
    rows.append((kept, {**{k: 100 * best[k] for k in METRIC_KEYS}, 'step': best.get('step'),
                        'clusters': best.get('clusters')}))
  else:
    rows.append(('kept model', {k: 100 * results[k] for k in METRIC_KEYS}))
  if last is not None and (best is None or last.get('step') != best.get('step')):
    rows.append(('last step', {**{k: 100 * last[k] for k in METRIC_KEYS},
                               'step': last.get('step'), 'clusters': last.get('clusters')}))
  for label, (r1, m) in PAPER_RESULTS.get(dataset, {}).items():
    rows.append((label, {'rank1': r1, 'mAP': m}))
  return rows


_COLUMNS = (('step', 'step'), ('clusters', 'clusters'), ('rank1', 'rank-1'), ('rank5', 'rank-5'),
            ('rank10', 'rank-10'), ('rank20', 'rank-20'), ('mAP', 'mAP'), ('mINP', 'mINP'))


def _cell(row: Mapping, key: str) -> str:
  v = row.get(key)
  if v is None:
    return '-'
  return str(int(v)) if key in ('step', 'clusters') else f'{v:.1f}'


def results_markdown(results: Mapping, dataset: str = '') -> str:
  """The final table as Markdown (%, test set): for notebooks and the README."""
  head = '| model | ' + ' | '.join(name for _, name in _COLUMNS) + ' |'
  lines = [head, '|' + ' --- |' * (len(_COLUMNS) + 1)]
  for label, row in results_rows(results, dataset):
    lines.append(f'| {label} | ' + ' | '.join(_cell(row, k) for k, _ in _COLUMNS) + ' |')
  return '\n'.join(lines)


def plot_table(results: Mapping, path, *, dataset: str = '') -> pathlib.Path:
  """The final table as a figure (%, test set)."""
  rows = results_rows(results, dataset)
  fig = _figure(9.5, 0.6 + 0.3 * (len(rows) + 1))
  ax = fig.subplots()
  ax.set_axis_off()
  table = ax.table(cellText=[[_cell(r, k) for k, _ in _COLUMNS] for _, r in rows],
                   rowLabels=[label for label, _ in rows], colLabels=[n for _, n in _COLUMNS],
                   loc='center', cellLoc='center')
  table.auto_set_font_size(False)
  table.set_fontsize(9)
  table.scale(1, 1.3)
  fig.suptitle(f'Final results on the {_dataset_label(dataset) or "test"} test set (%)',
               fontsize=10)
  return _save(fig, path, dpi=120)


# ------------------------------------------------------------------------------- Fig. 2

def _tfds_dir(records: RunRecords) -> pathlib.Path:
  tfds_dir = records.config.data.get('tfds_dir', '')
  return pathlib.Path(tfds_dir) if tfds_dir else records.root / 'tfds'


def _load_splits(records: RunRecords) -> dict:
  from jaxreid import data
  return data.load_splits(records.config.data, _tfds_dir(records),
                          synthetic_config=records.config.get('synthetic'))


def draw_camstyle(config, split, store, out_dir) -> pathlib.Path:
  """Fig. 2 into OUT_DIR/fig2_camstyle.png: originals (left) and their fakes under every camera,
  from a fakes store (camstyle.store.FakeStore) of `split`'s images."""
  from jaxreid.camstyle.train import sample_indices
  show = sample_indices(store.camids, config.camstyle.sample_images)
  cams = store.num_cameras
  fig = _figure(0.9 * (cams + 1), 1.7 * len(show))
  axes = fig.subplots(len(show), cams + 1, squeeze=False)
  for r, i in enumerate(show):
    own = int(store.camids[i])
    cells = [('original\n(cam %d)' % (own + 1), split.image(int(i)))]
    for k in range(cams):
      cells.append((f'cam {k + 1}', split.image(int(i)) if k == own else store.fake(i, k)))
    for col, (title, im) in enumerate(cells):
      ax = axes[r, col]
      ax.imshow(im)
      ax.set_xticks([])
      ax.set_yticks([])
      if col == own + 1:
        for spine in ax.spines.values():  # the image's own camera: the real image again
          spine.set_edgecolor('tab:green')
          spine.set_linewidth(2)
      if r == 0 or col == 0:
        ax.set_title(title, fontsize=7)
  # A narrow figure (2 or 3 cameras) would clip the title on one line.
  sep = ' ' if cams >= 4 else '\n'
  fig.suptitle(f'Camera-style transfer:{sep}originals and their fakes under every camera',
               fontsize=8)
  return _save(fig, pathlib.Path(out_dir) / 'fig2_camstyle.png', dpi=120)


def plot_camstyle(records: RunRecords, out_dir, splits: Mapping | None = None) -> pathlib.Path:
  """Fig. 2: the grid the camstyle stage drew (copied), or drawn again from the fakes store."""
  out = pathlib.Path(out_dir) / 'fig2_camstyle.png'
  drawn = records.root / 'camstyle' / 'fig2_camstyle.png'
  if drawn.is_file():
    if drawn.resolve() != out.resolve():
      out.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(drawn, out)
    return out
  from jaxreid.camstyle.store import FakeStore
  store = FakeStore.open(records.root / 'fakes')
  try:
    splits = splits or _load_splits(records)
    return draw_camstyle(records.config, splits['train'], store, out_dir)
  finally:
    store.close()


# ------------------------------------------------------------------------------- all of them

def _check_same_images(feats: Mapping, splits: Mapping, path: pathlib.Path) -> None:
  for side in ('query', 'gallery'):
    split = splits[side]
    if len(split) != len(feats[f'{side}_pids']) or not np.array_equal(
        split.pids, feats[f'{side}_pids']):
      raise VizError(f'{path}: its {side} features do not belong to the {side} images in the '
                     'work dir (expected the data the run evaluated)')


def plot_run(workdir, out_dir=None, *, num_queries: int = 4, topk: int = 10, max_ids: int = 20,
             seed: int = 0, method: str = 'tsne',
             log: Callable[[str], None] | None = print) -> dict[str, pathlib.Path]:
  """Draws every figure the work dir's records allow into out_dir (default DIR/figures);
  returns {figure name: PNG path}. A figure whose records are missing is skipped with a note."""
  records = load_records(workdir)
  out = pathlib.Path(out_dir) if out_dir else records.root / 'figures'
  log = log or (lambda _: None)
  written: dict[str, pathlib.Path] = {}
  splits = None

  def skip(name, why):
    log(f'{name}: skipped ({why})')

  def splits_once():
    nonlocal splits
    if splits is None:
      splits = _load_splits(records)
    return splits

  if not records.config.camstyle.get('enabled', True):
    skip('fig2_camstyle', 'the run had camstyle.enabled=False')
  elif not (records.root / 'fakes' / 'index.json').is_file() and not (
      records.root / 'camstyle' / 'fig2_camstyle.png').is_file():
    skip('fig2_camstyle', f'no fakes in {records.root / "fakes"} yet')
  else:
    written['fig2_camstyle'] = plot_camstyle(records, out, None)

  if records.steps:
    kept = (records.results or {}).get('best', {}).get('step')
    # The density head evaluates after epochs (each one re-clusters), not after merging steps.
    density = (records.results or {}).get('method') == 'density'
    written['fig7_steps'] = plot_steps(records.steps, out / 'fig7_steps.png',
                                       dataset=records.dataset, kept_step=kept,
                                       **({'xlabel': 'epoch (re-clustered every epoch)'}
                                          if density else {}))
  else:
    skip('fig7_steps', 'no evaluated step yet')

  last_step = records.steps[-1]['step'] if records.steps else None
  clusters = {s['step']: s.get('clusters') for s in records.steps}

  def panel_title(step):
    c = clusters.get(step)
    return f'step {step}' + (f' ({c} clusters)' if c is not None else '')

  panels = []
  if records.first is not None:
    panels.append((panel_title(0), records.first))
  if records.last is not None:
    panels.append((panel_title(last_step) if last_step is not None else 'last step',
                   records.last))
  if panels:
    written['fig8_tsne'] = plot_tsne(panels, out / 'fig8_tsne.png', max_ids=max_ids, seed=seed,
                                     method=method, dataset=records.dataset)
  else:
    skip('fig8_tsne', 'no saved test features (reid/features/*.npz) yet')

  feats = records.last if records.last is not None else records.first
  if feats is not None:
    feats_path = records.root / 'reid' / 'features' / (
        'last.npz' if records.last is not None else 'first.npz')
    sp = splits_once()
    _check_same_images(feats, sp, feats_path)
    step = last_step if records.last is not None else 0
    lists = ranked_lists(feats, num_queries=num_queries, topk=topk)
    written['ranked_results'] = plot_ranked(
        lists, feats, sp['query'].image, sp['gallery'].image, out / 'ranked_results.png',
        title=f'Ranked retrieval on the {_dataset_label(records.dataset)} test set, model of '
              f'step {step} (same identity and camera as the query left out)')
  else:
    skip('ranked_results', 'no saved test features (reid/features/*.npz) yet')

  if records.results is not None:
    written['results_table'] = plot_table(records.results, out / 'results_table.png',
                                          dataset=records.dataset)
  else:
    skip('results_table', 'the run has not finished (no results.json)')
  return written


def plot_main(argv: Sequence[str]) -> int:
  """`jaxreid plot --workdir=DIR [--out=DIR]`: writes the figures as PNG and prints their paths.
  argv: the arguments after `plot`."""
  parser = argparse.ArgumentParser(
      prog='jaxreid plot', description='Draw the paper\'s figures from a jaxreid work dir.')
  parser.add_argument('--workdir', required=True, help='work dir of a (finished or running) run')
  parser.add_argument('--out', default='', help='where the PNGs go (default: WORKDIR/figures)')
  parser.add_argument('--num_queries', type=int, default=4, help='queries in the ranked results')
  parser.add_argument('--topk', type=int, default=10, help='gallery images per query')
  parser.add_argument('--max_ids', type=int, default=20, help='identities in the t-SNE')
  parser.add_argument('--seed', type=int, default=0, help='picks the t-SNE identities')
  parser.add_argument('--embedding', default='tsne', choices=('tsne', 'pca'),
                      help='2-D embedding of Fig. 8 (scikit-learn t-SNE, or PCA)')
  args = parser.parse_args(list(argv))
  for name in ('num_queries', 'topk', 'max_ids'):
    if getattr(args, name) < 1:
      parser.error(f'--{name}={getattr(args, name)}: expected a positive integer')
  import matplotlib
  matplotlib.use('Agg')
  from jaxreid.camstyle.store import StoreError
  from jaxreid.data import DataError
  try:
    written = plot_run(args.workdir, args.out or None, num_queries=args.num_queries,
                       topk=args.topk, max_ids=args.max_ids, seed=args.seed,
                       method=args.embedding)
  except (VizError, DataError, StoreError) as e:
    sys.exit(f'jaxreid plot: {e}')
  if not written:
    sys.exit(f'jaxreid plot: {args.workdir}: nothing to draw yet')
  for path in written.values():
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(plot_main(sys.argv[1:]))
