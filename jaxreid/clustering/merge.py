"""Bottom-up merging on the host: walk candidate pairs by ascending distance, union-find, certify.

The procedure (BUC's, see docs/method.md): walk all image pairs (i, j) of different
clusters by ascending key (D(i, j), i, j), i < j; when the two images are in different clusters,
merge them (the larger label becomes the smaller); stop after m merges; renumber the surviving
labels 0..C-1 in ascending order of their old label. Sizes in the diversity term are those at the
start of the step.

We walk only the candidates the device kernel returns (each image's k nearest other-cluster images
under the directional distance A, distance.py) and certify at run time that the result equals the
full walk over all N^2 pairs:

  1. Walking directional entries (i -> j, key (A(i, j), min(i, j), max(i, j))) instead of pairs is
     the same walk: a pair's key is the smaller key of its two entries, and the second entry of a
     pair comes after the pair's images are already joined, so it is a no-op.
  2. Row i kept its k smallest entries; every entry it dropped has value >= b_i, the (k+1)-th
     smallest of the row (+inf when nothing was dropped).
  3. Let W be the value of the m-th merge of the candidate walk. If b_i > W for every row, every
     entry with value <= W is a candidate, so the full walk and the candidate walk see the same
     entries in the same order up to and including the m-th merge: they make the same merges and
     stop at the same point. Clusters formed during the walk need no special care: an entry inside
     a merged cluster is a no-op in both walks alike.
  4. Otherwise the rows with b_i <= W (and only they) may hide an entry that comes first: their
     candidates are recomputed with twice the k (logged) and the walk is redone. The comparison is
     strict, so a hidden entry tied in value with W is never trusted to sort after it. With k =
     N - 1 a row hides nothing (its own column is always excluded), so this terminates.

What "exact" means under floating point: the merge equals the full walk over the distances as the
kernel computes them, |x|^2 + |y|^2 - 2 x.y in float32 (bitwise the same on any device count).
Another implementation that rounds differently (a float64 reference, a different summation order)
can order two keys that differ by a few float32 ulps the other way; no float32 method can promise
more. With features on a coarse grid (small integers times a power of two, as in the tests) every
value is exact in float32, exact ties included, and the labels equal those of an exact reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from jaxreid import support_sets
from jaxreid.clustering import distance


@dataclasses.dataclass(frozen=True)
class MergeResult:
  """New labels [N] (0..C-1) and how they were obtained."""
  labels: np.ndarray
  num_merges: int        # merges made (m, or fewer when fewer clusters remained)
  last_weight: float     # D of the last merge (nan without merges)
  passes: int            # kernel passes (1 when the first top-k was already certified)
  recomputed_rows: int   # rows whose candidates were recomputed with a larger k, over all passes
  final_k: int           # the largest k any row needed


def _find(parent: list, x: int) -> int:
  while parent[x] != x:
    parent[x] = parent[parent[x]]  # path halving keeps the trees flat
    x = parent[x]
  return x


def walk(values: np.ndarray, rows: np.ndarray, columns: np.ndarray, cluster: np.ndarray,
         num_clusters: int, num_to_merge: int) -> tuple[np.ndarray, int, float]:
  """Union-find walk of candidate entries by ascending (value, min(i, j), max(i, j)).

  values/rows/columns are flat; cluster [N] are compact start-of-step ids. Returns (root [C] the
  smallest id of each cluster's final group, merges made, value of the last merge or +inf when
  fewer than num_to_merge merges happened).
  """
  keep = np.isfinite(values)
  values, rows, columns = values[keep], rows[keep], columns[keep]
  lo, hi = np.minimum(rows, columns), np.maximum(rows, columns)
  order = np.lexsort((hi, lo, values))
  parent = list(range(num_clusters))
  merges, last = 0, float('inf')
  if num_to_merge > 0:
    a_all, b_all = cluster[lo[order]].tolist(), cluster[hi[order]].tolist()
    for pos, (a, b) in enumerate(zip(a_all, b_all)):
      ra, rb = _find(parent, a), _find(parent, b)
      if ra == rb:
        continue
      # The larger label joins the smaller: the group's root is its smallest start-of-step id.
      parent[max(ra, rb)] = min(ra, rb)
      merges += 1
      if merges == num_to_merge:
        last = float(values[order[pos]])
        break
  root = np.array([_find(parent, c) for c in range(num_clusters)], np.int64)
  return root, merges, last


@jax.jit
def _nonfinite(features, fake_features):
  """0 when all are finite, else 1 (features) or 2 (fake_features): one reduction on the device,
  one scalar to fetch, no mask of the whole support set in memory."""
  code = jnp.where(jnp.all(jnp.isfinite(features)), 0, 1)
  if fake_features is not None:
    code = jnp.where((code == 0) & ~jnp.all(jnp.isfinite(fake_features)), 2, code)
  return code


def _check_inputs(features, fake_features, labels, num_to_merge, size_penalty, topk, block_size,
                  matmul_dtype):
  """Validated float32 features/fakes and int labels; one clear line for any user mistake.

  Features that are all jax Arrays stay on the device (checked there, never copied to the host);
  anything else is checked and returned as numpy.
  """
  on_device = isinstance(features, jax.Array) and (
      fake_features is None or isinstance(fake_features, jax.Array))
  xp = jnp if on_device else np   # jnp also knows bfloat16 as a floating type
  if not on_device:
    features = np.asarray(features)
    fake_features = None if fake_features is None else np.asarray(fake_features)
  if features.ndim != 2 or 0 in features.shape:
    raise ValueError(f'features has shape {features.shape}; expected (num_images, feature_dim), '
                     'non-empty')
  n, d = features.shape
  for name, x in (('features', features), ('fake_features', fake_features)):
    if x is not None and (not xp.issubdtype(x.dtype, xp.floating)
                          and not xp.issubdtype(x.dtype, xp.integer)):
      raise ValueError(f'{name} has dtype {x.dtype}; expected real numbers')
  if fake_features is not None:
    if fake_features.ndim != 3 or fake_features.shape[0] != n or fake_features.shape[2] != d:
      raise ValueError(f'fake_features has shape {fake_features.shape}; expected ({n}, L-1, {d}) '
                       'to match features, or None')
    if fake_features.shape[1] == 0:
      fake_features = None
  if on_device:
    # jnp.asarray returns a float32 array itself: no copy on the device either.
    features = jnp.asarray(features, jnp.float32)
    if fake_features is not None:
      fake_features = jnp.asarray(fake_features, jnp.float32)
    bad = int(_nonfinite(features, fake_features))
  else:
    features = features.astype(np.float32, copy=False)
    if fake_features is not None:
      fake_features = fake_features.astype(np.float32, copy=False)
    # In chunks: a mask of the whole support set would be a large temporary.
    finite = [x is None or all(np.isfinite(x[s:s + 1024]).all() for s in range(0, n, 1024))
              for x in (features, fake_features)]
    bad = 0 if all(finite) else finite.index(False) + 1
  if bad:
    raise ValueError(f"{('features', 'fake_features')[bad - 1]} contains NaN or infinite values; "
                     'expected finite features')
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels has shape {labels.shape} and dtype {labels.dtype}; expected ({n},) '
                     'integers, one cluster label per image')
  if isinstance(num_to_merge, bool) or not isinstance(num_to_merge, (int, np.integer)) \
      or num_to_merge < 0:
    raise ValueError(f'num_to_merge is {num_to_merge!r}; expected an integer >= 0')
  if not np.isfinite(size_penalty) or size_penalty < 0:
    raise ValueError(f'size_penalty is {size_penalty!r}; expected a finite number >= 0')
  if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
    raise ValueError(f'topk is {topk!r}; expected an integer >= 1')
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f'block_size is {block_size!r}; expected an integer >= 1')
  if matmul_dtype not in distance.MATMUL_DTYPES:
    raise ValueError(f'matmul_dtype is {matmul_dtype!r}; expected one of '
                     f'{sorted(distance.MATMUL_DTYPES)}')
  return features, fake_features, labels


def merge_clusters(features: Any, fake_features: Any, labels: Any, num_to_merge: int,
                   size_penalty: float, constraint: bool = True, *, topk: int = 32,
                   block_size: int = 512, matmul_dtype: str = 'float32',
                   mesh: Mesh | None = None) -> MergeResult:
  """One bottom-up merge step with its diagnostics; see `merge_step` for the arguments."""
  features, fake_features, labels = _check_inputs(features, fake_features, labels, num_to_merge,
                                                  size_penalty, topk, block_size, matmul_dtype)
  n = len(features)
  _, cluster = np.unique(labels, return_inverse=True)
  cluster = cluster.reshape(-1).astype(np.int32)
  num_clusters = int(cluster.max()) + 1
  m = int(num_to_merge)
  if m > num_clusters - 1:
    logging.warning('merge_step: %d merges asked but only %d clusters left; merging all of them',
                    m, num_clusters)
    m = num_clusters - 1
  if m == 0:
    return MergeResult(cluster.astype(np.int64), 0, float('nan'), 0, 0, 0)

  sizes = np.bincount(cluster)[cluster]
  kernel = distance.SupportSetKernel(support_sets.support_array(features, fake_features), cluster,
                                     sizes, float(size_penalty), constraint,
                                     block_size=block_size, matmul_dtype=matmul_dtype, mesh=mesh)
  k = min(int(topk), n - 1)
  row_k = np.full(n, k)
  # Candidates per pass, (rows, values [r, k_p], columns [r, k_p]); a row's latest pass counts.
  # Ragged on purpose: a few rows needing a large k never widen the store of all N rows.
  values, columns = kernel.topk(np.arange(n), k)
  passes_store = [(np.arange(n), values[:, :k], columns[:, :k])]
  latest = np.zeros(n, np.int32)
  bound = values[:, k].copy()
  recomputed = 0
  while True:
    flat_v, flat_r, flat_c = [], [], []
    for p, (rows, v, c) in enumerate(passes_store):
      keep = latest[rows] == p
      flat_v.append(v[keep].reshape(-1))
      flat_c.append(c[keep].reshape(-1))
      flat_r.append(np.repeat(rows[keep], v.shape[1]))
    root, merges, last = walk(np.concatenate(flat_v), np.concatenate(flat_r),
                              np.concatenate(flat_c), cluster, num_clusters, m)
    unsafe = np.flatnonzero(np.isfinite(bound) & (bound <= last))
    if len(unsafe) == 0:
      break
    k = min(2 * int(row_k[unsafe].max()), n - 1)
    logging.info('merge_step: the top-k cut could hide pairs at or below the last merge weight '
                 '%.6g for %d of %d images; recomputing their candidates with k=%d',
                 last, len(unsafe), n, k)
    values, columns = kernel.topk(unsafe, k, desc=f'merge distances (k={k})')
    latest[unsafe] = len(passes_store)
    passes_store.append((unsafe, values[:, :k], columns[:, :k]))
    bound[unsafe] = values[:, k]
    row_k[unsafe] = k
    recomputed += len(unsafe)
  passes = len(passes_store)

  survivors = np.unique(root)
  new_labels = np.searchsorted(survivors, root)[cluster].astype(np.int64)
  return MergeResult(new_labels, merges, last, passes, recomputed, int(row_k.max()))


def merge_step(features: Any, fake_features: Any, labels: Any, num_to_merge: int,
               size_penalty: float, constraint: bool = True, *, topk: int = 32,
               block_size: int = 512, matmul_dtype: str = 'float32',
               mesh: Mesh | None = None) -> np.ndarray:
  """New labels [N] (0..C-1) after merging `num_to_merge` cluster pairs, exactly as the full walk.

  features [N, d]; fake_features None (no style transfer) or [N, L-1, d], fake l of image i in i's
  cluster; labels [N] any integers (renumbered in ascending order); size_penalty is lambda of the
  diversity term; constraint=False counts fake-fake pairs too. topk is the first candidate count
  per image (enlarged where the certificate needs it), block_size the rows per device block,
  matmul_dtype 'bfloat16' for accelerators. num_to_merge above C - 1 merges everything (logged).
  features and fake_features may be jax Arrays (config.cluster.features_on_device): they are then
  checked and used on the devices, never copied to the host, with the same labels bit for bit.
  """
  return merge_clusters(features, fake_features, labels, num_to_merge, size_penalty, constraint,
                        topk=topk, block_size=block_size, matmul_dtype=matmul_dtype,
                        mesh=mesh).labels
