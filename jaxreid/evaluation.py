"""Re-ID evaluation: CMC, mAP and mINP under the Market-1501 protocol, with blocked jax kernels.

Protocol (Market-1501's, as torchreid and open-reid compute it; docs/method.md): rank the gallery
by ascending squared Euclidean distance, ties broken by gallery order (a stable sort); drop gallery
items with the query's pid AND camera; skip queries left without a true match. Distractors (pid 0)
are ordinary wrong matches.

How it runs: query rows go in blocks over the device mesh (rows split over 'data', gallery
replicated), so no device or host holds more than a block x gallery slab, and only four numbers per
query come back. A true match's rank is found by COUNTING the kept gallery items before it rather
than by sorting the row: a query has a few true matches (K) against thousands of gallery items (G),
and comparing on (distance, gallery index) reproduces the stable tie order exactly. On CPU at
Market size this is ~14x faster than a stable sort per row (`python -m
jaxreid.benchmarks.evaluation --variants`). Queries are grouped by their number of true matches so
K is padded little; blocks with very many true matches use the stable sort instead. Distances are
float32 throughout.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax import lax
from jax.sharding import Mesh

from jaxreid import parallel
from jaxreid.clustering.distance import squared_norms

# The numbers a run reports, as fractions in [0, 1]: CMC at ranks 1, 5, 10, 20, mAP and mINP.
METRIC_KEYS = ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP')

# Per-block true-match width above which a stable sort of the row (G log G) is cheaper than
# counting (K x G); measured on CPU at Market size, where the two cost the same near K ~ 140.
SORT_ABOVE = 128
_MIN_K = 4


# ------------------------------------------------------------ device kernels (one query block)

def _sq_distances(qf: jax.Array, gf: jax.Array, g_sq: jax.Array) -> jax.Array:
  """Squared Euclidean distances of a query block to the gallery, float32, clamped at 0."""
  q_sq = jnp.sum(qf * qf, axis=1, keepdims=True)
  # HIGHEST: accelerators would otherwise round the float32 products (TF32/bf16) and reorder ranks.
  cross = jnp.matmul(qf, gf.T, precision=lax.Precision.HIGHEST)
  return jnp.maximum(q_sq + g_sq[None, :] - 2.0 * cross, 0.0)


def _count_metrics(dist, good, q_pid, q_cam, g_pid, g_cam):
  """Per query: (first true-match rank, AP, INP, has NaN), counting kept items before each match.

  dist (B, G); good (B, K) gallery indices of the true matches, padded with G.
  """
  num_g = dist.shape[1]
  valid = good < num_g
  good_d = jnp.take_along_axis(dist, jnp.minimum(good, num_g - 1), axis=1)
  junk = (g_pid[None, :] == q_pid[:, None]) & (g_cam[None, :] == q_cam[:, None])
  # NaN never compares true, so dropped items are never counted (user distances are NaN-free).
  kept_d = jnp.where(junk, jnp.nan, dist)
  index = lax.broadcasted_iota(jnp.int32, (1, num_g), 1)

  def kept_before(_, column):
    # One true match per query at a time: a (B, G) slab instead of (B, K, G) in memory.
    d_j, j = column[0][:, None], column[1][:, None]
    before = (kept_d < d_j) | ((kept_d == d_j) & (index < j))
    return None, jnp.sum(before, axis=1, dtype=jnp.int32)

  _, counts = lax.scan(kept_before, None, (good_d.T, good.T))
  rank = counts.T + 1
  g_i, g_j = good_d[:, None, :], good_d[:, :, None]
  good_before = (g_i < g_j) | ((g_i == g_j) & (good[:, None, :] < good[:, :, None]))
  hits = jnp.sum(good_before & valid[:, None, :], axis=2, dtype=jnp.int32) + 1
  return _summarise(valid, rank, hits, num_g) + (jnp.any(jnp.isnan(dist), axis=1),)


def _sort_metrics(dist, q_pid, q_cam, g_pid, g_cam):
  """Per query: (first true-match rank, AP, INP, has NaN) from a stable sort of each row."""
  num_g = dist.shape[1]
  has_nan = jnp.any(jnp.isnan(dist), axis=1)
  same = g_pid[None, :] == q_pid[:, None]
  junk = same & (g_cam[None, :] == q_cam[:, None])
  code = jnp.where(junk, 2, same.astype(jnp.int8)).astype(jnp.int8)  # 0 wrong, 1 true, 2 dropped
  # The sort's float order puts -0.0 before +0.0; the protocol (and the counting) has them equal.
  dist = jnp.where(dist == 0, 0.0, dist)
  _, code = lax.sort((dist, code), dimension=1, is_stable=True, num_keys=1)
  true = code == 1
  rank = jnp.cumsum(code != 2, axis=1, dtype=jnp.int32)
  hits = jnp.cumsum(true, axis=1, dtype=jnp.int32)
  return _summarise(true, rank, hits, num_g) + (has_nan,)


def _summarise(is_true, rank, hits, num_g):
  """(first rank, AP, INP) from the kept rank and hit count at each true match (where is_true)."""
  num_true = jnp.sum(is_true, axis=1, dtype=jnp.int32)
  precision = hits.astype(jnp.float32) / jnp.maximum(rank, 1).astype(jnp.float32)
  ap = jnp.sum(jnp.where(is_true, precision, 0.0), axis=1) / jnp.maximum(num_true, 1)
  first = jnp.min(jnp.where(is_true, rank, num_g + 1), axis=1)
  last = jnp.max(jnp.where(is_true, rank, 0), axis=1)
  inp = num_true.astype(jnp.float32) / jnp.maximum(last, 1).astype(jnp.float32)
  return first, ap, inp


_distances_jit = jax.jit(_sq_distances)
_count_from_dist = jax.jit(_count_metrics)
_sort_from_dist = jax.jit(_sort_metrics)


@jax.jit
def _count_from_features(qf, gf, g_sq, good, q_pid, q_cam, g_pid, g_cam):
  return _count_metrics(_sq_distances(qf, gf, g_sq), good, q_pid, q_cam, g_pid, g_cam)


@jax.jit
def _sort_from_features(qf, gf, g_sq, q_pid, q_cam, g_pid, g_cam):
  return _sort_metrics(_sq_distances(qf, gf, g_sq), q_pid, q_cam, g_pid, g_cam)


# ------------------------------------------------------------ host side: inputs and truth

def _labels(query: Any, gallery: Any, what: str, num_q: int, num_g: int):
  """Query/gallery labels (pids or camids) as compact int32 codes; only equality matters."""
  query, gallery = np.asarray(query), np.asarray(gallery)
  for name, x, n in ((f'query_{what}', query, num_q), (f'gallery_{what}', gallery, num_g)):
    if x.ndim != 1 or len(x) != n:
      raise ValueError(f'{name} has shape {x.shape}; expected ({n},), one value per '
                       f'{name.split("_")[0]} item')
  try:
    _, codes = np.unique(np.concatenate([query, gallery]), return_inverse=True)
  except TypeError as e:
    raise ValueError(f'query_{what} and gallery_{what} cannot be compared ({e}); expected '
                     'integers of one kind') from None
  codes = codes.astype(np.int32)
  return codes[:num_q], codes[num_q:]


def _num_true_matches(q_pid, q_cam, g_pid, g_cam) -> np.ndarray:
  """Per query: gallery items with its pid from another camera, counted without a (Q, G) matrix."""
  num_cams = int(max(q_cam.max(), g_cam.max())) + 1
  pids = np.sort(g_pid)
  pid_cams = np.sort(g_pid.astype(np.int64) * num_cams + g_cam)
  q_pid_cam = q_pid.astype(np.int64) * num_cams + q_cam
  same_pid = np.searchsorted(pids, q_pid, 'right') - np.searchsorted(pids, q_pid, 'left')
  same_cam = (np.searchsorted(pid_cams, q_pid_cam, 'right') -
              np.searchsorted(pid_cams, q_pid_cam, 'left'))
  return same_pid - same_cam


def _true_match_table(q_pid, q_cam, g_pid, g_cam, k: int) -> np.ndarray:
  """(B, k) gallery indices of each query's true matches in gallery order, padded with G."""
  true = (g_pid[None, :] == q_pid[:, None]) & (g_cam[None, :] != q_cam[:, None])
  rows, cols = np.nonzero(true)  # row-major: each row's columns come out ascending
  slot = np.arange(len(rows)) - np.searchsorted(rows, rows)
  table = np.full((len(q_pid), k), len(g_pid), np.int32)
  table[rows, slot] = cols
  return table


def _check_max_rank(max_rank: Any) -> int:
  if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
    raise ValueError(f'max_rank must be a positive integer; got {max_rank!r}')
  return int(max_rank)


def _check_block_size(block_size: Any, mesh: Mesh) -> int:
  """Rows per block, rounded up to a multiple of the device count (rows are split over 'data')."""
  if (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
      or block_size < 1):
    raise ValueError(f'block_size must be a positive integer; got {block_size!r}')
  n = mesh.devices.size
  return -(-int(block_size) // n) * n


def _check_features(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'{name} has shape {x.shape}; expected (num_items, feature_dim), non-empty')
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f'{name} has dtype {x.dtype}; expected real numbers')
  x = x.astype(np.float32, copy=False)
  if not np.isfinite(x).all():
    raise ValueError(f'{name} contains NaN or infinite values; expected finite features')
  return x


def _k_bucket(num_true: int) -> int:
  """Padded true-match width of a block: a power of two, so few kernel shapes get compiled."""
  return max(_MIN_K, 1 << (max(num_true, 1) - 1).bit_length())


# ------------------------------------------------------------ public API

def pairwise_sq_distances(query_features: Any, gallery_features: Any, block_size: int = 1024, *,
                          mesh: Mesh | None = None) -> np.ndarray:
  """The (num_query, num_gallery) float32 squared Euclidean distance matrix, computed in row blocks.

  For a matrix to keep or inspect; `evaluate_features` never materialises it.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  qf = _check_features(query_features, 'query_features')
  gf = _check_features(gallery_features, 'gallery_features')
  if qf.shape[1] != gf.shape[1]:
    raise ValueError(f'query_features have dimension {qf.shape[1]} but gallery_features '
                     f'{gf.shape[1]}; expected the same feature dimension')
  rows = min(_check_block_size(block_size, mesh), _check_block_size(len(qf), mesh))
  gf_dev = parallel.put_global(gf, parallel.replicated(mesh))
  g_sq = squared_norms(gf_dev)
  out = np.empty((len(qf), len(gf)), np.float32)
  for start in tqdm.trange(0, len(qf), rows, desc='distances', leave=False, disable=None):
    block = _pad_rows(qf[start:start + rows], rows)
    block_dev = parallel.put_global(block, parallel.data_sharding(mesh))
    d = parallel.to_host(_distances_jit(block_dev, gf_dev, g_sq))
    out[start:start + rows] = d[:len(out) - start]
  return out


def evaluate(distmat: Any, query_pids: Any, gallery_pids: Any, query_camids: Any,
             gallery_camids: Any, max_rank: int = 50, *, block_size: int = 1024,
             mesh: Mesh | None = None) -> dict:
  """CMC (length max_rank), mAP, mINP and the number of valid queries from a distance matrix.

  `distmat` (num_query, num_gallery) is ranked in float32. See `evaluate_features` for the rest.
  """
  distmat = np.asarray(distmat)
  if distmat.ndim != 2 or 0 in distmat.shape:
    raise ValueError(f'distmat has shape {distmat.shape}; expected (num_query, num_gallery), '
                     'non-empty')
  if not np.issubdtype(distmat.dtype, np.number) or np.issubdtype(distmat.dtype,
                                                                  np.complexfloating):
    raise ValueError(f'distmat has dtype {distmat.dtype}; expected real numbers')

  def block_metrics(queries, good, *labels):
    dist = parallel.put_global(distmat[queries].astype(np.float32, copy=False),
                               parallel.data_sharding(mesh))
    if good is None:
      return _sort_from_dist(dist, *labels)
    return _count_from_dist(dist, good, *labels)

  mesh = parallel.make_mesh() if mesh is None else mesh
  return _evaluate(block_metrics, distmat.shape, query_pids, gallery_pids, query_camids,
                   gallery_camids, max_rank, block_size, mesh)


def evaluate_features(query_features: Any, gallery_features: Any, query_pids: Any,
                      gallery_pids: Any, query_camids: Any, gallery_camids: Any,
                      max_rank: int = 50, *, block_size: int = 1024,
                      mesh: Mesh | None = None) -> dict:
  """Evaluates features directly: distances and ranking per query block on the device.

  Returns {'cmc': float64 (max_rank,), 'mAP': float, 'mINP': float, 'num_valid_queries': int},
  metrics as fractions in [0, 1]. If max_rank exceeds the gallery size we warn (as torchreid does)
  and the CMC beyond the gallery size repeats its last value, 1.0 (every valid query has its true
  match somewhere), so the array always has length max_rank.
  """
  qf = _check_features(query_features, 'query_features')
  gf = _check_features(gallery_features, 'gallery_features')
  if qf.shape[1] != gf.shape[1]:
    raise ValueError(f'query_features have dimension {qf.shape[1]} but gallery_features '
                     f'{gf.shape[1]}; expected the same feature dimension')
  mesh = parallel.make_mesh() if mesh is None else mesh
  gf_dev = parallel.put_global(gf, parallel.replicated(mesh))
  g_sq = squared_norms(gf_dev)

  def block_metrics(queries, good, *labels):
    q = parallel.put_global(qf[queries], parallel.data_sharding(mesh))
    if good is None:
      return _sort_from_features(q, gf_dev, g_sq, *labels)
    return _count_from_features(q, gf_dev, g_sq, good, *labels)

  return _evaluate(block_metrics, (len(qf), len(gf)), query_pids, gallery_pids, query_camids,
                   gallery_camids, max_rank, block_size, mesh)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  if len(x) == rows:
    return x
  return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def _evaluate(block_metrics, shape, query_pids, gallery_pids, query_camids, gallery_camids,
              max_rank, block_size, mesh) -> dict:
  """Shared driver: valid queries grouped by true-match count, one jitted kernel call per block.

  block_metrics(queries, good or None, q_pid, q_cam, g_pid, g_cam) runs the kernel on the rows
  `queries`: by counting against the true-match table `good`, or (None) by a full sort.
  """
  max_rank = _check_max_rank(max_rank)
  num_q, num_g = shape
  q_pid, g_pid = _labels(query_pids, gallery_pids, 'pids', num_q, num_g)
  q_cam, g_cam = _labels(query_camids, gallery_camids, 'camids', num_q, num_g)
  if max_rank > num_g:
    warnings.warn(f'max_rank {max_rank} exceeds the gallery size {num_g}; CMC beyond rank {num_g} '
                  'repeats its last value', stacklevel=3)
  num_true = _num_true_matches(q_pid, q_cam, g_pid, g_cam)
  # Queries without a true match are skipped by the protocol; grouping the rest by their number of
  # true matches keeps the padded width K of each block close to what its queries need.
  valid = np.flatnonzero(num_true > 0)
  if len(valid) == 0:
    raise ValueError('no query has a true match (same pid, other camera) in the gallery; expected '
                     'query and gallery pids/camids from the same data set')
  valid = valid[np.argsort(num_true[valid], kind='stable')]
  rows = min(_check_block_size(block_size, mesh), _check_block_size(len(valid), mesh))
  row_sharding = parallel.data_sharding(mesh)
  g_labels = [parallel.put_global(x, parallel.replicated(mesh)) for x in (g_pid, g_cam)]

  first = np.empty(len(valid), np.int64)
  ap, inp = np.empty(len(valid)), np.empty(len(valid))
  for start in tqdm.trange(0, len(valid), rows, desc='evaluate', leave=False, disable=None):
    n = min(rows, len(valid) - start)
    # The last block repeats its last query to fill the rows; the repeats are dropped below.
    queries = valid[np.minimum(np.arange(start, start + rows), len(valid) - 1)]
    q_labels = [parallel.put_global(x[queries], row_sharding) for x in (q_pid, q_cam)]
    k = _k_bucket(int(num_true[queries].max()))
    good = None
    if k <= SORT_ABOVE:
      good = parallel.put_global(
          _true_match_table(q_pid[queries], q_cam[queries], g_pid, g_cam, k), row_sharding)
    f, a, i, has_nan = parallel.to_host(block_metrics(queries, good, *q_labels, *g_labels))
    if has_nan[:n].any():
      row = int(queries[np.flatnonzero(has_nan[:n])[0]])
      raise ValueError(f'the distances of query {row} contain NaN; expected finite distances '
                       '(a finite distmat, or features small enough to square in float32)')
    first[start:start + n], ap[start:start + n], inp[start:start + n] = f[:n], a[:n], i[:n]
  return _aggregate(first, ap, inp, max_rank)


def _aggregate(first: np.ndarray, ap: np.ndarray, inp: np.ndarray, max_rank: int) -> dict:
  """Per-valid-query results -> CMC curve and means."""
  hist = np.bincount(np.minimum(first, max_rank + 1), minlength=max_rank + 2)
  cmc = np.cumsum(hist[1:max_rank + 1]) / len(first)
  return {'cmc': cmc.astype(np.float64), 'mAP': float(np.mean(ap, dtype=np.float64)),
          'mINP': float(np.mean(inp, dtype=np.float64)), 'num_valid_queries': int(len(first))}


def raw_pixel_features(images: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
  """The raw-pixel baseline: uint8 images [n, h, w, 3] flattened, minus `mean` (their own mean
  image if None), L2-normalised; what retrieval gives before any network."""
  x = np.asarray(images).reshape(len(images), -1).astype(np.float32)
  x -= x.mean(0) if mean is None else np.asarray(mean, np.float32).reshape(-1)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def format_results(metrics: Mapping[str, Any]) -> str:
  """One log line: 'rank-1 73.7% rank-5 87.2% rank-10 91.0% rank-20 94.0% mAP 38.0% mINP 10.1%'."""
  cmc = np.asarray(metrics['cmc'])
  parts = [f'rank-{r} {100 * cmc[r - 1]:.1f}%' for r in (1, 5, 10, 20) if r <= len(cmc)]
  parts += [f'{name} {100 * metrics[name]:.1f}%' for name in ('mAP', 'mINP') if name in metrics]
  return ' '.join(parts)
