"""The feature diagnostics count what they say, checked against brute force on small inputs."""

import itertools

import numpy as np

from jaxreid.tools import feature_diagnostics as fd


def _toy(seed=0, ids=12, per_id=4, cams=3, d=16, camera_shift=0.0):
  rng = np.random.default_rng(seed)
  pids = np.repeat(np.arange(ids), per_id)
  camids = rng.integers(0, cams, len(pids))
  f = rng.normal(size=(ids, d))[pids] + 0.3 * rng.normal(size=(len(pids), d))
  f += camera_shift * rng.normal(size=(cams, d))[camids]
  return f.astype(np.float32), pids, camids


def test_neighbour_rates_match_brute_force():
  f, pids, cams = _toy(camera_shift=1.0)
  got = fd.neighbour_rates(f, pids, cams, block=7)   # blocks that do not divide N
  d = np.linalg.norm(f[:, None] - f[None], axis=2)
  np.fill_diagonal(d, np.inf)
  nn = d.argmin(1)
  d[cams[:, None] == cams[None]] = np.inf
  cross = d.argmin(1)
  assert got['nn_same_identity'] == np.mean(pids[nn] == pids)
  assert got['nn_same_camera'] == np.mean(cams[nn] == cams)
  assert got['cross_camera_nn_same_identity'] == np.mean(pids[cross] == pids)


def test_pair_counts_match_brute_force():
  rng = np.random.default_rng(1)
  labels, pids, cams = rng.integers(0, 6, 40), rng.integers(0, 8, 40), rng.integers(0, 2, 40)
  got = fd.pair_precision_by_camera(labels, pids, cams)
  pairs = [(i, j) for i, j in itertools.combinations(range(40), 2) if labels[i] == labels[j]]
  cross = [(i, j) for i, j in pairs if cams[i] != cams[j]]
  same = [(i, j) for i, j in pairs if cams[i] == cams[j]]
  assert got['cross_camera_pairs'] == len(cross) and got['same_camera_pairs'] == len(same)
  assert got['cross_camera_correct'] == sum(pids[i] == pids[j] for i, j in cross)
  assert got['same_camera_correct'] == sum(pids[i] == pids[j] for i, j in same)


def test_merging_well_separated_people_is_precise_and_a_camera_shift_spoils_it():
  clean = fd.merge_trajectory(*_toy(), steps=3, merge_percent=0.1, size_penalty=0.0)
  assert [s['clusters'] for s in clean] == [48 - 4, 48 - 8, 48 - 12]
  assert all(s['pairwise_precision'] == 1.0 for s in clean)
  shifted = fd.merge_trajectory(*_toy(camera_shift=3.0), steps=3, merge_percent=0.1,
                                size_penalty=0.0)
  # A camera shift larger than the people's spread: merges stay within cameras.
  assert all(s['cross_camera_pairs'] == 0 for s in shifted)
