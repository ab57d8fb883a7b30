"""The sparse k-reciprocal Jaccard distance against a dense reference, and DBSCAN on its graph."""

import numpy as np
import pytest

from jaxreid import parallel
from jaxreid.clustering import density, jaccard


def reference_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
  """The k-reciprocal re-ranking distance (lambda = 0) with full N x N matrices, row by row."""
  x = x.astype(np.float64)
  n = len(x)
  sq = (x * x).sum(1)
  d = sq[:, None] + sq[None] - 2 * x @ x.T
  order_d = d.copy()
  np.fill_diagonal(order_d, -np.inf)             # the row itself first, then by distance
  rank = np.argsort(order_d, axis=1, kind='stable')[:, :k1]

  def recip(i, k):
    fwd = rank[i, :k]
    return np.array([j for j in fwd if i in rank[j, :k]], int)

  kh = int(np.around(k1 / 2))
  v = np.zeros((n, n))
  for i in range(n):
    r = recip(i, k1)
    exp = list(r)
    for c in r:
      rc = recip(c, kh)
      if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
        exp.extend(rc)
    exp = np.unique(exp)
    w = np.exp(-d[i, exp])
    v[i, exp] = w / w.sum()
  if k2 > 1:
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
  out = np.zeros((n, n))
  for i in range(n):
    s = np.minimum(v[i][None], v).sum(1)
    out[i] = 1 - s / (2 - s)
  return np.maximum(out, 0)


def tied_features(n, d=8, seed=0):
  """Entries in {-1, 0, 1} / 2: every distance is exact in float32, with many exact ties, and
  duplicated rows tie at distance 0."""
  rng = np.random.default_rng(seed)
  x = rng.integers(-1, 2, (n, d)).astype(np.float32) / 2
  x[n // 2] = x[0]
  x[n // 3] = x[1]
  return x


@pytest.mark.parametrize('n,k1,k2', [(60, 10, 3), (45, 6, 1), (30, 30, 6)])
def test_sparse_jaccard_equals_dense_reference_with_ties(n, k1, k2):
  x = tied_features(n, seed=n)
  ref = reference_jaccard(x, min(k1, n), k2)
  mesh = parallel.make_mesh()
  got = jaccard.jaccard_distance(x, k1, k2, block_size=8, mesh=mesh)
  dense = np.ones((n, n))
  coo = got.tocoo()
  dense[coo.row, coo.col] = coo.data
  np.testing.assert_allclose(dense, ref, atol=2e-6)
  # Stored pairs are exactly the pairs whose encodings overlap (reference distance < 1).
  assert np.array_equal(dense < 1 - 1e-6, ref < 1 - 1e-6)
  assert ((dense < 1 - 1e-6) != (ref < 1 - 1e-6)).sum() == 0


def test_initial_rank_puts_self_first_and_breaks_ties_by_index():
  x = np.zeros((5, 4), np.float32)               # all at distance 0
  rank = jaccard.initial_rank(x, 4, mesh=parallel.make_mesh())
  np.testing.assert_array_equal(rank, [[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 1, 3], [3, 0, 1, 2],
                                       [4, 0, 1, 2]])


def test_jaccard_memory_is_sparse_and_cut_at_max_distance():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(40, 16))
  x = (centers[:, None] + 0.05 * rng.normal(size=(40, 10, 16))).reshape(400, 16)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  got = jaccard.jaccard_distance(x.astype(np.float32), 20, 6, max_distance=0.6,
                                 mesh=parallel.make_mesh())
  assert got.nnz < 400 * 40                         # O(N k), not N^2
  assert got.data.max() <= 0.6
  # The diagonal is stored (a point is its own neighbour), at 0 up to float32 rounding.
  assert np.all(got[np.arange(400), np.arange(400)].A1 < 1e-6)
  assert all(i in got[i].indices for i in range(400))


def test_dbscan_on_sparse_graph_equals_dense_dbscan():
  from sklearn.cluster import DBSCAN
  x = tied_features(80, seed=3)
  sparse = jaccard.jaccard_distance(x, 12, 4, max_distance=0.6, mesh=parallel.make_mesh())
  ref = reference_jaccard(x, 12, 4)
  want = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(ref)
  assert (want == -1).any() and want.max() >= 1     # outliers and several clusters
  np.testing.assert_array_equal(density.dbscan(sparse, 0.6, 4), want)


def test_clusters_well_separated_identities():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(10, 32))
  x = (centers[:, None] + 0.1 * rng.normal(size=(10, 8, 32))).reshape(80, 32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = density.cluster(x.astype(np.float32), k1=10, k2=3, eps=0.6, min_samples=4,
                           mesh=parallel.make_mesh())
  truth = np.repeat(np.arange(10), 8)
  assert len(set(labels[:80])) == 10
  for c in range(10):
    assert len(set(labels[truth == c])) == 1


def test_support_graph_counts_real_real_and_real_fake_never_fake_fake():
  import scipy.sparse as sp
  # Two images with L = 2 (nodes 0, 1 are image 0 real / fake; nodes 2, 3 image 1).
  def graph(pairs):
    r, c, v = zip(*[(a, b, d) for a, b, d in pairs] + [(b, a, d) for a, b, d in pairs])
    return density.support_graph(sp.csr_matrix((v, (r, c)), shape=(4, 4)), 2, 2).toarray()
  assert graph([(1, 3, 0.1)])[0, 1] == 0             # fake-fake: not a link
  assert graph([(1, 3, 0.1), (0, 3, 0.3)])[0, 1] == pytest.approx(0.3)   # real-fake
  assert graph([(0, 2, 0.5), (1, 2, 0.2)])[1, 0] == pytest.approx(0.2)   # min, both directions
  assert graph([(0, 1, 0.01)])[0, 1] == 0             # own fake: same image, not a link
