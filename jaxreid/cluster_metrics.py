"""How well pseudo-labels match true identities: for reporting only, never for training."""

from __future__ import annotations

import numpy as np


def _pairs(counts: np.ndarray) -> float:
  counts = counts.astype(np.float64)
  return float(np.sum(counts * (counts - 1) / 2))


def cluster_quality(labels: np.ndarray, true_ids: np.ndarray) -> dict:
  """Purity and pairwise precision / recall / F-score of a clustering against true identities."""
  labels = np.asarray(labels)
  true_ids = np.asarray(true_ids)
  if labels.shape != true_ids.shape:
    raise ValueError(f'labels {labels.shape} and true ids {true_ids.shape} differ in shape')
  _, lab = np.unique(labels, return_inverse=True)
  _, tid = np.unique(true_ids, return_inverse=True)
  # Contingency table as counts of (cluster, identity) cells, without a dense C x P matrix.
  cell = lab.astype(np.int64) * (tid.max() + 1) + tid
  _, cell_counts = np.unique(cell, return_counts=True)
  cell_cluster = np.unique(cell) // (tid.max() + 1)
  majority = np.zeros(lab.max() + 1, np.int64)
  np.maximum.at(majority, cell_cluster, cell_counts)
  same_both = _pairs(cell_counts)
  same_cluster = _pairs(np.bincount(lab))
  same_id = _pairs(np.bincount(tid))
  precision = same_both / same_cluster if same_cluster else 1.0
  recall = same_both / same_id if same_id else 1.0
  f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'num_clusters': int(lab.max() + 1), 'purity': float(majority.sum() / len(labels)),
          'pairwise_precision': precision, 'pairwise_recall': recall, 'pairwise_f': f}
