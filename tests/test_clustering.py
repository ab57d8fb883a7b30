"""Cluster merging: the top-k kernel + certified walk equals the plain full-matrix procedure."""

import logging

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxreid import parallel
from jaxreid.clustering import merge_clusters, merge_step, support_topk
from jaxreid.support_sets import aligned_empty, support_array

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
  num_clusters = draw(st.integers(2, n))
  # Arbitrary label values (gaps, any order): only their order matters for the renumbering.
  values = draw(st.lists(st.integers(0, 10 * n), min_size=num_clusters, max_size=num_clusters,
                         unique=True))
  layout = draw(st.lists(st.integers(0, num_clusters - 1), min_size=n, max_size=n))
  labels = np.asarray(values)[layout]
  present = len(np.unique(labels))
  return dict(
      n=n, labels=labels,
      m=draw(st.integers(1, present - 1)) if present > 1 else 0,
      num_fakes=draw(st.sampled_from([0, 2])),
      lam=draw(st.sampled_from([0.0, 1 / 64, 1 / 8])),
      constraint=draw(st.booleans()),
      levels=draw(st.sampled_from([1, 64])),  # 1: ties everywhere; 64: few ties
      topk=draw(st.sampled_from([1, 3, 32])),  # small k: the certificate has work to do
      seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(_problems())
def test_merge_matches_full_matrix_reference(p):
  rng = np.random.default_rng(p['seed'])
  feats = _quantised(rng, (p['n'], DIM), p['levels'])
  fakes = _quantised(rng, (p['n'], p['num_fakes'], DIM), p['levels']) if p['num_fakes'] else None
  got = merge_step(feats, fakes, p['labels'], p['m'], p['lam'], p['constraint'], topk=p['topk'])
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


def _directional(features, fakes, labels, lam, constraint):
  """Reference A(i, j) in float64: r_i (or all of S_i without the constraint) against S_j."""
  sets = features[:, None] if fakes is None else np.concatenate([features[:, None], fakes], 1)
  sets = sets.astype(np.float64)
  rows = sets[:, :1] if constraint else sets
  a = ((rows[:, :, None, None] - sets[None, None]) ** 2).sum(-1).min(axis=(1, 3))
  sizes = np.bincount(labels)[labels]
  a = a + lam * (sizes[:, None] + sizes[None, :])
  return np.where(labels[:, None] == labels[None, :], np.inf, a)


@pytest.mark.parametrize('num_fakes,constraint', [(0, True), (2, True), (2, False)])
def test_kernel_returns_the_k_plus_1_nearest_other_cluster_images(num_fakes, constraint):
  rng = np.random.default_rng(7)
  n, k = SIZES[0], 5
  labels = rng.integers(0, 9, n)
  feats = _quantised(rng, (n, DIM), 2)  # coarse: many exact ties, lower column first
  fakes = _quantised(rng, (n, num_fakes, DIM), 2) if num_fakes else None
  values, columns = support_topk(feats, fakes, labels, np.bincount(labels)[labels], 1 / 8, k,
                                 constraint)
  ref = _directional(feats, fakes, labels, 1 / 8, constraint)
  order = np.argsort(ref, axis=1, kind='stable')[:, :k + 1]
  np.testing.assert_array_equal(values, np.take_along_axis(ref, order, 1).astype(np.float32))
  finite = np.isfinite(values)
  np.testing.assert_array_equal(columns[finite], order[finite])


def test_same_labels_and_candidates_on_one_and_eight_devices():
  # Continuous features: last-bit rounding would show if blocks differed between device counts.
  rng = np.random.default_rng(3)
  n = SIZES[1]
  feats = rng.standard_normal((n, DIM)).astype(np.float32)
  fakes = (feats[:, None] + 0.3 * rng.standard_normal((n, 2, DIM))).astype(np.float32)
  labels = rng.integers(0, 25, n)
  one = parallel.make_mesh(jax.devices()[:1])
  eight = parallel.make_mesh()
  assert eight.devices.size == 8
  args = (feats, fakes, labels, np.bincount(labels)[labels], 0.05, 6)
  for a, b in zip(support_topk(*args, mesh=one), support_topk(*args, mesh=eight)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(merge_step(feats, fakes, labels, 8, 0.05, topk=2, mesh=one),
                                merge_step(feats, fakes, labels, 8, 0.05, topk=2, mesh=eight))


def test_unit_features_match_float64_reference():
  # L2-normalised continuous features as the re-ID net gives them; near-ties within float32
  # rounding are improbable at this size (see merge.py on what "exact" means in floating point).
  rng = np.random.default_rng(11)
  n = SIZES[1]
  x = rng.standard_normal((n, 3, DIM))
  x[:, 1:] = x[:, :1] + 0.5 * x[:, 1:]
  x = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
  labels = np.arange(n) // 2
  got = merge_step(x[:, 0], x[:, 1:], labels, 7, 0.003)
  np.testing.assert_array_equal(got, _reference(x[:, 0], x[:, 1:], labels, 7, 0.003, True))


def test_bfloat16_matmul_is_exact_on_bfloat16_features():
  # Values q / 64 with |q| <= 64 are exact in bfloat16 and the kernel accumulates in float32.
  rng = np.random.default_rng(5)
  n = SIZES[1]
  feats = _quantised(rng, (n, DIM), 64)
  fakes = _quantised(rng, (n, 2, DIM), 64)
  labels = rng.integers(0, 30, n)
  got = merge_step(feats, fakes, labels, 9, 1 / 64, matmul_dtype='bfloat16', topk=3)
  np.testing.assert_array_equal(got, _reference(feats, fakes, labels, 9, 1 / 64, True))


def test_relabelling_larger_to_smaller_then_ascending_renumbering():
  # Images on a line; labels are arbitrary integers. Nearest pair: image 0 (label 7) and image 3
  # (label 9) -> 9 becomes 7; survivors 3, 5, 7 are renumbered 0, 1, 2.
  feats = np.zeros((5, DIM), np.float32)
  feats[:, 0] = [0.0, 10.0, 10.0, 0.5, 20.0]
  labels = np.array([7, 3, 3, 9, 5])
  np.testing.assert_array_equal(merge_step(feats, None, labels, 1, 0.0), [2, 0, 0, 2, 1])
  # Second merge: {7, 9} (at 0 and 0.5) with 3 (at 10) is nearer than 3 with 5 (at 20).
  np.testing.assert_array_equal(merge_step(feats, None, labels, 2, 0.0), [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(merge_step(feats, None, labels, 0, 0.0), [2, 0, 0, 3, 1])


def test_asking_more_merges_than_clusters_merges_everything(caplog):
  feats = _quantised(np.random.default_rng(0), (6, DIM), 64)
  with caplog.at_level(logging.WARNING):
    got = merge_step(feats, None, np.array([0, 0, 1, 2, 3, 3]), 10, 0.0)
  np.testing.assert_array_equal(got, np.zeros(6))
  assert 'only 4 clusters left' in caplog.text


@pytest.mark.parametrize('change,message', [
    (dict(features=np.zeros((4,), np.float32)), 'features has shape'),
    (dict(fake_features=np.zeros((4, 2, DIM + 1), np.float32)), r'fake_features has shape'),
    (dict(features=np.full((4, DIM), np.nan, np.float32)), 'features contains NaN'),
    (dict(labels=np.array([0, 1, 2])), 'labels has shape'),
    (dict(labels=np.array([0.0, 1, 2, 3])), 'labels has shape'),
    (dict(num_to_merge=-1), 'num_to_merge is -1'),
    (dict(num_to_merge=1.5), 'num_to_merge is 1.5'),
    (dict(size_penalty=-0.1), 'size_penalty is -0.1'),
    (dict(topk=0), 'topk is 0'),
    (dict(block_size=0), 'block_size is 0'),
    (dict(matmul_dtype='float16'), "matmul_dtype is 'float16'"),
])
def test_user_errors_are_one_clear_line(change, message):
  args = dict(features=np.zeros((4, DIM), np.float32), fake_features=None,
              labels=np.arange(4), num_to_merge=1, size_penalty=0.0)
  args.update(change)
  with pytest.raises(ValueError, match=message) as err:
    merge_step(**args)
  assert '\n' not in str(err.value)


def test_support_slots_of_one_array_are_used_without_a_copy():
  # The layout feature extraction gives: [N, L, d], slot 0 real. Views of it are used in place
  # (and an aligned block reaches an XLA CPU device without a copy either).
  support = aligned_empty((SIZES[0], 3, DIM))
  support[:] = _quantised(np.random.default_rng(0), support.shape, 64)
  s = support_array(support[:, 0], support[:, 1:])
  assert np.shares_memory(s, support) and s.ctypes.data % 64 == 0
  np.testing.assert_array_equal(s, support)
  copied = support_array(support[:, 0].copy(), support[:, 1:].copy())
  assert not np.shares_memory(copied, support) and copied.ctypes.data % 64 == 0
  np.testing.assert_array_equal(copied, support)
  labels = np.arange(SIZES[0]) // 3
  np.testing.assert_array_equal(merge_step(support[:, 0], support[:, 1:], labels, 3, 1 / 64),
                                _reference(support[:, 0], support[:, 1:], labels, 3, 1 / 64, True))
