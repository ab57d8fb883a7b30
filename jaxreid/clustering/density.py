"""Density clustering of the real training images: DBSCAN (scikit-learn) on a sparse radius graph
of k-reciprocal Jaccard distances, optionally over support sets (real images + their fakes).

With support sets the Jaccard distance is computed over all N * L images (reals and fakes), and the
distance of two real images i != j is the smallest over the pairs of their support sets that the
paper's clustering constraint counts: real-real and real-fake, never fake-fake. Only real images
are clustered, so min_samples counts real images and an image's own fakes never make it dense.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh

from jaxreid.clustering import jaccard


def support_graph(dist: sp.csr_matrix, num_images: int, support_size: int) -> sp.csr_matrix:
  """[N, N] distances of real images from node distances over N * L support nodes.

  Node a = (image a // L, slot a % L), slot 0 the real image. Keeps the minimum over the counted
  pairs (not both fakes, different images); the diagonal is stored at 0.
  """
  coo = dist.tocoo()
  ia, ib = coo.row // support_size, coo.col // support_size
  fake_a, fake_b = coo.row % support_size > 0, coo.col % support_size > 0
  keep = ~(fake_a & fake_b) & (ia != ib)
  ia, ib, d = ia[keep], ib[keep], coo.data[keep]
  key = ia.astype(np.int64) * num_images + ib
  order = np.lexsort((d, key))
  key, d = key[order], d[order]
  first = np.ones(len(key), bool)
  first[1:] = key[1:] != key[:-1]
  key, d = key[first], d[first]                  # the smallest distance of each pair
  # Both directions: the node distance is symmetric, the real/fake roles are not.
  rows = np.concatenate([key // num_images, key % num_images, np.arange(num_images)])
  cols = np.concatenate([key % num_images, key // num_images, np.arange(num_images)])
  vals = np.concatenate([d, d, np.zeros(num_images, d.dtype)])
  key = rows * num_images + cols
  order = np.lexsort((vals, key))
  key, vals = key[order], vals[order]
  first = np.ones(len(key), bool)
  first[1:] = key[1:] != key[:-1]
  key, vals = key[first], vals[first]
  return sp.csr_matrix((vals, (key // num_images, key % num_images)),
                       shape=(num_images, num_images))


def dbscan(dist: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
  """int32 [N] DBSCAN labels 0..C-1, -1 for outliers, on a sparse precomputed distance graph
  (stored entries are the only neighbours; entries beyond eps are ignored)."""
  from sklearn.cluster import DBSCAN
  labels = DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(dist)
  return labels.astype(np.int32)


def cluster(features: np.ndarray, *, k1: int, k2: int, eps: float, min_samples: int,
            support_size: int = 1, block_size: int = 512, matmul_dtype: str = 'float32',
            mesh: Mesh | None = None) -> np.ndarray:
  """Pseudo-labels (-1: outlier, left out this epoch) of N real images.

  features: [N, d] (support_size 1), or [N, L, d] support sets with the real image in slot 0.
  """
  features = np.asarray(features, np.float32)
  n = features.shape[0]
  flat = features.reshape(-1, features.shape[-1])
  dist = jaccard.jaccard_distance(flat, k1, k2, max_distance=eps, block_size=block_size,
                                  matmul_dtype=matmul_dtype, mesh=mesh)
  if support_size > 1:
    dist = support_graph(dist, n, support_size)
  return dbscan(dist, eps, min_samples)


def cluster_centers(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """float32 [C, d]: the L2-normalised mean feature of each cluster 0..C-1 (outliers skipped)."""
  labels = np.asarray(labels)
  c = int(labels.max()) + 1
  keep = labels >= 0
  sums = np.zeros((c, features.shape[-1]), np.float64)
  np.add.at(sums, labels[keep], features[keep])
  sums /= np.maximum(np.bincount(labels[keep], minlength=c), 1)[:, None]
  return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(
      np.float32)
