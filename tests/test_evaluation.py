import jax
import numpy as np
import pytest

from jaxreid import evaluation, parallel
from jaxreid.evaluation import evaluate, evaluate_features, format_results, pairwise_sq_distances


def _reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
  """The protocol written out plainly: rank by (distance, gallery index), drop, scan the list."""
  cmcs, aps, inps = [], [], []
  for q in range(len(q_pids)):
    order = sorted(range(len(g_pids)), key=lambda g: (float(distmat[q, g]), g))
    kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
    true = [g_pids[g] == q_pids[q] for g in kept]
    if not any(true):
      continue
    hits, precisions = 0, []
    for rank, is_true in enumerate(true, start=1):
      if is_true:
        hits += 1
        precisions.append(hits / rank)
        last = rank
    first = true.index(True) + 1
    cmcs.append([float(first <= k) for k in range(1, max_rank + 1)])
    aps.append(sum(precisions) / len(precisions))
    inps.append(hits / last)
  return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


def _one(distances, g_pids, g_cams, q_pid=1, q_cam=0, max_rank=None):
  """Evaluates one query against a small gallery."""
  return evaluate(np.asarray([distances], np.float32), [q_pid], g_pids, [q_cam], g_cams,
                  max_rank=max_rank or len(g_pids))


def test_same_pid_same_camera_items_are_dropped_from_the_ranking():
  # Gallery by distance: same pid+cam (dropped), wrong, true -> the true match is at rank 2.
  m = _one([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[0, 1, 1])
  np.testing.assert_array_equal(m['cmc'], [0, 1, 1])
  assert m['mAP'] == pytest.approx(1 / 2) and m['mINP'] == pytest.approx(1 / 2)
  # Same pid from ANOTHER camera is a true match, same camera but other pid stays a wrong match.
  m = _one([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[1, 0, 2])
  assert m['cmc'][0] == 1 and m['mAP'] == pytest.approx((1 + 2 / 3) / 2)


def test_query_without_a_true_match_is_skipped():
  distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], np.float32)
  # Query 1 (pid 5) is only in the gallery under its own camera: not a valid query.
  m = evaluate(distmat, [1, 5], [1, 2, 5], [0, 0], [1, 1, 0], max_rank=3)
  alone = evaluate(distmat[:1], [1], [1, 2, 5], [0], [1, 1, 0], max_rank=3)
  assert m['num_valid_queries'] == 1
  np.testing.assert_array_equal(m['cmc'], alone['cmc'])
  assert (m['mAP'], m['mINP']) == (alone['mAP'], alone['mINP']) == (1.0, 1.0)


def test_distractors_with_pid_0_count_as_wrong_matches():
  m = _one([0.1, 0.2, 0.3, 0.4], g_pids=[0, 0, 1, 0], g_cams=[1, 0, 2, 1])
  np.testing.assert_array_equal(m['cmc'], [0, 0, 1, 1])
  assert m['mAP'] == pytest.approx(1 / 3) and m['mINP'] == pytest.approx(1 / 3)


def test_ties_are_broken_by_gallery_order():
  # All distances equal: the ranking is the gallery order, for both kernels.
  m = _one([0.5] * 4, g_pids=[2, 1, 3, 1], g_cams=[1, 1, 1, 1])
  assert m['cmc'][0] == 0 and m['cmc'][1] == 1
  assert m['mAP'] == pytest.approx((1 / 2 + 2 / 4) / 2) and m['mINP'] == pytest.approx(2 / 4)
  m = _one([0.5] * 4, g_pids=[1, 2, 1, 3], g_cams=[1, 1, 1, 1])
  assert m['mAP'] == pytest.approx((1 + 2 / 3) / 2)
  # A tie with a dropped item does not move the true match.
  m = _one([0.5, 0.5, 0.9], g_pids=[1, 1, 2], g_cams=[0, 1, 1])
  assert m['cmc'][0] == 1 and m['mAP'] == 1.0


def test_ties_with_negative_zero_follow_gallery_order_in_the_sort_kernel(monkeypatch):
  monkeypatch.setattr(evaluation, 'SORT_ABOVE', 0)
  m = _one([0.0, -0.0], g_pids=[2, 1], g_cams=[1, 1])
  assert m['cmc'][0] == 0 and m['mAP'] == pytest.approx(1 / 2)


def test_minp_and_ap_by_hand():
  # Kept ranking: T W T W W T W -> true matches at ranks 1, 3, 6.
  g_pids = [1, 2, 1, 3, 4, 1, 5]
  m = _one(np.arange(7) / 10, g_pids=g_pids, g_cams=[1] * 7)
  assert m['mINP'] == pytest.approx(3 / 6)
  assert m['mAP'] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
  np.testing.assert_array_equal(m['cmc'], np.ones(7))
  # Two queries: the means are over valid queries.
  distmat = np.stack([np.arange(7) / 10, np.arange(7)[::-1] / 10]).astype(np.float32)
  m2 = evaluate(distmat, [1, 1], g_pids, [0, 0], [1] * 7, max_rank=7)
  # Reversed distances rank the gallery 6, 5, ..., 0: pids 5 1 4 3 1 2 1, true at ranks 2, 5, 7.
  assert m2['mINP'] == pytest.approx((3 / 6 + 3 / 7) / 2)
  assert m2['mAP'] == pytest.approx(((1 + 2 / 3 + 3 / 6) / 3 + (1 / 2 + 2 / 5 + 3 / 7) / 3) / 2)


def _random_case(rng, num_q, num_g, ties):
  q_pids = rng.integers(0, 8, num_q) + 10**9  # arbitrary pid values, only equality matters
  g_pids = rng.integers(0, 8, num_g) + 10**9
  g_pids[rng.random(num_g) < 0.2] = 0  # distractors
  q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
  if ties:
    distmat = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
  else:
    distmat = rng.random((num_q, num_g)).astype(np.float32)
  return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize('sort_above', [evaluation.SORT_ABOVE, 0], ids=['count', 'sort'])
@pytest.mark.parametrize('seed', range(3))
def test_random_cases_match_the_plain_loop(seed, sort_above, monkeypatch):
  monkeypatch.setattr(evaluation, 'SORT_ABOVE', sort_above)
  rng = np.random.default_rng(seed)
  # Fixed sizes so the cases share compiled kernels; 43 queries in blocks of 12 -> 16 rows (a
  # multiple of the 8 devices) pads the last block.
  case = _random_case(rng, 43, 72, ties=seed != 1)
  cmc, m_ap, m_inp, num_valid = _reference(*case, max_rank=10)
  m = evaluate(*case, max_rank=10, block_size=12)
  np.testing.assert_allclose(m['cmc'], cmc, atol=1e-12)
  assert m['mAP'] == pytest.approx(m_ap, abs=1e-6)
  assert m['mINP'] == pytest.approx(m_inp, abs=1e-6)
  assert m['num_valid_queries'] == num_valid


def test_pairwise_sq_distances_match_numpy():
  rng = np.random.default_rng(0)
  qf, gf = rng.standard_normal((37, 24)), rng.standard_normal((53, 24))
  d = pairwise_sq_distances(qf, gf, block_size=16)
  expected = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
  assert d.dtype == np.float32 and d.shape == (37, 53)
  np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-4)
  assert (pairwise_sq_distances(gf[:5], gf[:5]).diagonal() >= 0).all()


def test_features_path_equals_distmat_path_on_one_and_eight_devices():
  rng = np.random.default_rng(1)
  pids = np.repeat(np.arange(30), 6)
  cams = np.tile(np.arange(6), 30)
  centres = rng.standard_normal((30, 16))
  feats = centres[pids] + 0.8 * rng.standard_normal((len(pids), 16))
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  query = np.arange(len(pids)) % 6 == 0
  args = (feats[query], feats[~query], pids[query], pids[~query], cams[query], cams[~query])
  one = evaluate_features(*args, block_size=8, mesh=parallel.make_mesh(jax.devices()[:1]))
  eight = evaluate_features(*args, block_size=8)
  via_matrix = evaluate(pairwise_sq_distances(*args[:2]), *args[2:])
  for m in (eight, via_matrix):
    np.testing.assert_array_equal(m['cmc'], one['cmc'])
    assert (m['mAP'], m['mINP'], m['num_valid_queries']) == (
        one['mAP'], one['mINP'], one['num_valid_queries'])
  assert 0 < one['mAP'] < 1 and one['num_valid_queries'] == 30


def test_max_rank_beyond_gallery_warns_and_pads_with_the_last_value():
  with pytest.warns(UserWarning, match='max_rank 6 exceeds the gallery size 3'):
    m = _one([0.3, 0.2, 0.1], g_pids=[1, 2, 3], g_cams=[1, 1, 1], max_rank=6)
  np.testing.assert_array_equal(m['cmc'], [0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize('call, match', [
    (lambda: evaluate(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1, 1]),
     r'gallery_pids has shape \(2,\); expected \(3,\)'),
    (lambda: evaluate(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1]), 'distmat has shape'),
    (lambda: evaluate(np.array([[np.nan, 1.0]]), [1], [1, 2], [0], [1, 1], max_rank=2),
     'query 0 contain NaN'),
    (lambda: evaluate(np.zeros((1, 2)), [1], [2, 3], [0], [1, 1], max_rank=2),
     'no query has a true match'),
    (lambda: evaluate(np.zeros((1, 2)), [1], [1, 3], [0], [1, 1], max_rank=0),
     'max_rank must be a positive integer'),
    (lambda: evaluate(np.zeros((1, 2)), [1], [1, 3], [0], [1, 1], max_rank=2, block_size=0),
     'block_size must be a positive integer'),
    (lambda: evaluate_features(np.zeros((1, 4)), np.zeros((2, 5)), [1], [1, 3], [0], [1, 1]),
     'expected the same feature dimension'),
    (lambda: pairwise_sq_distances(np.full((1, 4), np.inf), np.zeros((2, 4))),
     'query_features contains NaN or infinite'),
])
def test_user_errors_are_one_clear_line(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert '\n' not in str(info.value)


def test_format_results_is_one_line_of_percentages():
  metrics = {'cmc': np.linspace(0.5, 1.0, 50), 'mAP': 0.38, 'mINP': 0.101, 'num_valid_queries': 3}
  line = format_results(metrics)
  assert line == (f'rank-1 50.0% rank-5 {100 * metrics["cmc"][4]:.1f}% '
                  f'rank-10 {100 * metrics["cmc"][9]:.1f}% rank-20 {100 * metrics["cmc"][19]:.1f}% '
                  'mAP 38.0% mINP 10.1%')
  assert format_results({**metrics, 'cmc': metrics['cmc'][:5]}).startswith('rank-1 50.0% rank-5')
  assert 'rank-10' not in format_results({**metrics, 'cmc': metrics['cmc'][:5]})
