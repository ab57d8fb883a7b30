"""The k-reciprocal Jaccard distance (Zhong et al., CVPR 2017, as used by SpCL and Cluster Contrast)
from top-k neighbour lists, in O(N * k) memory.

The reference builds two dense N x N matrices (the encoding V and the distance), which is what runs
out of memory at MSMT17 scale. Every step here needs only neighbour lists or sparse rows:

  1. rank[i, :k1]: i itself, then its k1 - 1 nearest other images by squared Euclidean distance
     (ties: lower index first), from the blocked device kernel of `distance.py`.
  2. R(i, k) = {j in rank[i, :k] : i in rank[j, :k]}, the k-reciprocal neighbours; R*(i) adds
     R(c, round(k1 / 2)) for every c in R(i, k1) sharing more than 2/3 of it with R(i, k1).
  3. V[i, j] = softmax over j in R*(i) of -d(i, j): a sparse row of |R*(i)| entries.
  4. Query expansion: V <- mean of the V rows of rank[i, :k2] (sparse, k2 rows each).
  5. d_J(i, j) = 1 - s / (2 - s) with s = sum_c min(V[i, c], V[j, c]); s > 0 only where the rows
     share a column, so the output is a sparse matrix over those pairs (absent pairs: distance 1).

Squared distances are |x|^2 + |y|^2 - 2 x.y (2 - 2 x.y for unit features, as the reference).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh

from jaxreid.clustering import distance


def initial_rank(features: np.ndarray, k: int, *, block_size: int = 512,
                 matmul_dtype: str = 'float32', mesh: Mesh | None = None) -> np.ndarray:
  """int32 [N, k]: each row i itself, then its k - 1 nearest other rows (ties: lower index)."""
  features = np.asarray(features, np.float32)
  n = len(features)
  k = int(min(k, n))
  rank = np.empty((n, k), np.int32)
  rank[:, 0] = np.arange(n)
  if k > 1:
    # Distinct labels: the kernel masks only the row itself; it returns k_arg + 1 columns.
    _, cols = distance.support_topk(features, None, np.arange(n), np.zeros(n, np.float32), 0.0,
                                    k - 2, block_size=block_size, matmul_dtype=matmul_dtype,
                                    mesh=mesh)
    rank[:, 1:] = cols[:, :k - 1]
  return rank


def reciprocal_mask(rank: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
  """bool [N, k]: whether rank[i, p] (p < k) also has i among its own first k."""
  n = len(rank)
  head = np.ascontiguousarray(rank[:, :k])
  out = np.empty((n, k), bool)
  for start in range(0, n, block):
    rows = np.arange(start, min(start + block, n))
    back = head[head[rows]]                      # [B, k, k]
    out[rows] = np.any(back == rows[:, None, None], axis=2)
  return out


def _row_unique(x: np.ndarray) -> np.ndarray:
  """Each row's distinct non-negative values, ascending, padded with -1 at the end."""
  s = np.sort(x, axis=1)
  dup = np.zeros_like(s, bool)
  dup[:, 1:] = s[:, 1:] == s[:, :-1]
  s = np.where(dup | (s < 0), np.iinfo(s.dtype).max, s)
  s = np.sort(s, axis=1)
  return np.where(s == np.iinfo(s.dtype).max, -1, s)


def expanded_sets(rank: np.ndarray, k1: int, block: int = 1024) -> np.ndarray:
  """int32 [N, W]: R*(i) of every row (ascending, -1 padded), W the widest set."""
  n = len(rank)
  kh = int(np.around(k1 / 2))
  m1, mh = reciprocal_mask(rank, k1), reciprocal_mask(rank, kh)
  r1 = np.where(m1, rank[:, :k1], -1).astype(np.int32)
  rh = np.where(mh, rank[:, :kh], -1).astype(np.int32)
  parts = []
  for start in range(0, n, block):
    rows = slice(start, min(start + block, n))
    r = r1[rows]                                   # [B, k1]
    cand = rh[np.maximum(r, 0)]                    # [B, k1, kh]: R(c, kh) of each c in R(i, k1)
    valid = (cand >= 0) & (r[:, :, None] >= 0)
    inside = np.any(cand[:, :, :, None] == r[:, None, None, :], axis=3) & valid
    size, shared = valid.sum(2), inside.sum(2)
    keep = (r >= 0) & (3 * shared > 2 * size)      # |R(c) & R(i)| > 2/3 |R(c)|, exactly
    extra = np.where(keep[:, :, None] & valid, cand, -1).reshape(len(r), -1)
    parts.append(_row_unique(np.concatenate([r, extra], axis=1)))
  width = max(int((p >= 0).sum(1).max()) for p in parts)
  return np.concatenate([p[:, :width] for p in parts]).astype(np.int32)


def encoding(features: np.ndarray, sets: np.ndarray, pair_block: int = 1 << 15) -> sp.csr_matrix:
  """Sparse V [N, N]: row i the softmax of -d(i, j) over j in sets[i] (float32)."""
  features = np.asarray(features, np.float32)
  n = len(features)
  rows, cols = np.nonzero(sets >= 0)
  cols = sets[rows, cols]
  sq = np.einsum('nd,nd->n', features, features)
  dist = np.empty(len(rows), np.float32)
  for start in range(0, len(rows), pair_block):
    i, j = rows[start:start + pair_block], cols[start:start + pair_block]
    dist[start:start + pair_block] = sq[i] + sq[j] - 2 * np.einsum('nd,nd->n', features[i],
                                                                    features[j])
  # Softmax per row; shifting by the row's smallest distance leaves it unchanged.
  counts = np.bincount(rows, minlength=n)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  low = np.minimum.reduceat(dist, starts) if len(dist) else dist
  w = np.exp(-(dist - np.repeat(low, counts)))
  w /= np.repeat(np.add.reduceat(w, starts), counts)
  return sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n, n))


def query_expansion(v: sp.csr_matrix, rank: np.ndarray, k2: int) -> sp.csr_matrix:
  """Each row replaced by the mean of the rows of its first k2 neighbours (itself included)."""
  if k2 <= 1:
    return v
  n = v.shape[0]
  k2 = min(k2, rank.shape[1])
  avg = sp.csr_matrix((np.full(n * k2, 1.0 / k2, np.float32),
                       (np.repeat(np.arange(n), k2), rank[:, :k2].ravel())), shape=(n, n))
  out = (avg @ v).tocsr()
  out.sort_indices()
  return out


def jaccard_from_encoding(v: sp.csr_matrix, max_distance: float | None = None,
                          block: int = 256) -> sp.csr_matrix:
  """Sparse d_J over the pairs whose rows share a column, entries <= max_distance if given."""
  n = v.shape[0]
  vt = v.T.tocsr()                                 # column c -> the rows having it
  out = []
  for start in range(0, n, block):
    part = v[start:min(start + block, n)].tocoo()
    c = part.col
    lengths = vt.indptr[c + 1] - vt.indptr[c]
    total = int(lengths.sum())
    # For every stored (i, c): every (j, V[j, c]) of column c.
    offsets = np.repeat(vt.indptr[c] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    pos = np.arange(total) + offsets
    m = np.minimum(np.repeat(part.data, lengths), vt.data[pos])
    # Summed into a dense [block, N] buffer: linear in the pairs, O(block * N) memory.
    rows_here = part.shape[0]
    flat = np.repeat(part.row.astype(np.int64), lengths) * n + vt.indices[pos]
    s = np.bincount(flat, weights=m, minlength=rows_here * n)
    where = np.flatnonzero(s > 0)
    sv = s[where]
    d = np.maximum(1.0 - sv / (2.0 - sv), 0.0).astype(np.float32)
    keep = d <= max_distance if max_distance is not None else np.ones(len(d), bool)
    row, col = where // n, where % n
    out.append((d[keep], row[keep] + start, col[keep]))
  # One construction from coordinates: sparse sums would drop the stored zeros.
  data, rows, cols = (np.concatenate(x) for x in zip(*out))
  return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def jaccard_distance(features: np.ndarray, k1: int = 30, k2: int = 6, *,
                     max_distance: float | None = None, block_size: int = 512,
                     matmul_dtype: str = 'float32', mesh: Mesh | None = None,
                     rank: np.ndarray | None = None) -> sp.csr_matrix:
  """Sparse [N, N] k-reciprocal Jaccard distance; pairs not stored are at distance 1.

  Stored entries may be exactly 0 (the diagonal, duplicates): read them as stored, not as absent.
  `rank` lets a caller reuse neighbour lists it already has (at least k1 columns).
  """
  if rank is None:
    rank = initial_rank(features, k1, block_size=block_size, matmul_dtype=matmul_dtype,
                        mesh=mesh)
  k1 = min(k1, rank.shape[1])
  v = encoding(features, expanded_sets(rank, k1))
  v = query_expansion(v, rank, k2)
  return jaccard_from_encoding(v, max_distance)
