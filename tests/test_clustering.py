"""Cluster merging: the top-k kernel + certified walk equals the plain full-matrix procedure."""

import logging

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxreid import parallel
from jaxreid.clustering import merge_clusters, merge_step, support_topk

# Few distinct shapes, so the kernel compiles a handful of times for the whole file.
SIZES = (24, 40)
DIM = 16


def _quantised(rng, shape, levels):
  """Features on a grid (integers in [-levels, levels] / 64): every float32 operation on them in
  the kernel is exact, so labels can be compared with an exact reference, exact ties included."""
  return rng.integers(-levels, levels + 1, shape).astype(np.float32) / 64


def _reference(features, fakes, labels, m, lam, constraint):
  """The procedure as written: full distances over all support images in float64, every pair
  (i < j) of different clusters walked by (D, i, j), the larger label relabelled to the smaller."""
  n = len(features)
  sets = features[:, None] if fakes is None else np.concatenate([features[:, None], fakes], 1)
  sets = sets.astype(np.float64)
  num = sets.shape[1]
  flat = sets.reshape(n * num, -1)
  full = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1).reshape(n, num, n, num)
  counted = np.ones((num, num), bool)
  if constraint:
    counted[1:, 1:] = False  # fake-fake pairs are not counted
  dist = np.where(counted[None, :, None, :], full, np.inf).min(axis=(1, 3))
  _, start = np.unique(labels, return_inverse=True)
  sizes = np.bincount(start)[start]
  pairs = []
  for i in range(n):
    for j in range(i + 1, n):
      if start[i] != start[j]:
        pairs.append((dist[i, j] + lam * (sizes[i] + sizes[j]), i, j))
  pairs.sort()
  cur = start.copy()
  merges = 0
  for _, i, j in pairs:
    if merges == m:
      break
    if cur[i] != cur[j]:
      small, large = min(cur[i], cur[j]), max(cur[i], cur[j])
      cur[cur == large] = small
      merges += 1
  return np.unique(cur, return_inverse=True)[1].reshape(-1)


@st.composite
def _problems(draw):
  n = draw(st.sampled_from(SIZES))
  num_fakes = draw(st.sampled_from([0, 2]))
  num_clusters = draw(st.integers(1, n))
  # Arbitrary label values (gaps, any order): only their order matters for the renumbering.
  label_values = draw(st.lists(st.integers(0, 10 * n), min_size=num_clusters,
                               max_size=num_clusters, unique=True))
  labels = np.asarray(label_values)[np.random.default_rng(draw(st.integers(0, 2**16))).integers(
      0, num_clusters, n)]
  return dict(
      n=n, num_fakes=num_fakes, labels=labels,
      m=draw(st.integers(0, len(np.unique(labels)) - 1)),
      lam=draw(st.sampled_from([0.0, 1 / 64, 1 / 8])),
      constraint=draw(st.booleans()),
      levels=draw(st.sampled_from([1, 64])),  # 1: ties everywhere; 64: few ties
      seed=draw(st.integers(0, 2**16)))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(_problems())
def test_merge_matches_full_matrix_reference(p):
  rng = np.random.default_rng(p['seed'])
  feats = _quantised(rng, (p['n'], DIM), p['levels'])
  fakes = _quantised(rng, (p['n'], p['num_fakes'], DIM), p['levels']) if p['num_fakes'] else None
  got = merge_step(feats, fakes, p['labels'], p['m'], p['lam'], p['constraint'], topk=4)
  want = _reference(feats, fakes, p['labels'], p['m'], p['lam'], p['constraint'])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('num_fakes,constraint', [(0, True), (2, True), (2, False)])
def test_certificate_enlarges_tiny_k_to_the_exact_answer(num_fakes, constraint, caplog):
  # Ten clusters of four, in close pairs along one axis (0, 1, 10, 11, 30, 31, ...): each image's
  # single nearest other-cluster image lies in its pair, so the top-1 candidates allow only the
  # five pair merges, and the sixth (1 with 10) needs k > 4. The certificate must find that out.
  rng = np.random.default_rng(num_fakes)
  labels = np.repeat(np.arange(10), 4)
  centres = np.zeros((10, DIM), np.float32)
  centres[:, 0] = np.array([0, 1, 10, 11, 30, 31, 60, 61, 100, 101]) / 2
  feats = centres[labels] + _quantised(rng, (40, DIM), 1) / 16
  fakes = (feats[:, None] + _quantised(rng, (40, num_fakes, DIM), 1) / 16) if num_fakes else None
  caplog.set_level(logging.INFO)
  res = merge_clusters(feats, fakes, labels, 6, 1 / 64, constraint, topk=1)
  assert 'recomputing their candidates with k=2' in caplog.text
  assert res.passes > 1 and res.final_k > 4
  want = _reference(feats, fakes, labels, 6, 1 / 64, constraint)
  np.testing.assert_array_equal(res.labels, want)
  np.testing.assert_array_equal(want, np.repeat([0, 0, 0, 0, 1, 1, 2, 2, 3, 3], 4))
