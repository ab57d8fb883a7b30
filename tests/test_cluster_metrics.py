import itertools

import numpy as np
import pytest

from jaxreid.cluster_metrics import cluster_quality


def _reference(labels, ids):
  """Plain pair enumeration and per-cluster majority counts."""
  pairs = list(itertools.combinations(range(len(labels)), 2))
  same_c = [labels[a] == labels[b] for a, b in pairs]
  same_i = [ids[a] == ids[b] for a, b in pairs]
  both = sum(c and i for c, i in zip(same_c, same_i))
  majority = sum(max(np.sum(ids[labels == c] == p) for p in set(ids[labels == c]))
                 for c in set(labels))
  return (majority / len(labels), both / sum(same_c) if sum(same_c) else 1.0,
          both / sum(same_i) if sum(same_i) else 1.0)


@pytest.mark.parametrize('seed', range(5))
def test_matches_pair_enumeration(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 7, 40)
  ids = rng.integers(100, 106, 40)
  q = cluster_quality(labels, ids)
  purity, precision, recall = _reference(labels, ids)
  assert q['purity'] == pytest.approx(purity)
  assert q['pairwise_precision'] == pytest.approx(precision)
  assert q['pairwise_recall'] == pytest.approx(recall)


def test_singletons_are_pure_with_zero_recall():
  q = cluster_quality(np.arange(6), np.array([0, 0, 1, 1, 2, 2]))
  assert q['purity'] == 1.0 and q['pairwise_recall'] == 0.0 and q['num_clusters'] == 6
