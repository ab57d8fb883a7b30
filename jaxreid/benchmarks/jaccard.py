"""Benchmark: the sparse k-reciprocal Jaccard distance vs the top-k pass alone and a full-matrix
numpy reference, in time and peak memory.

  python -m jaxreid.benchmarks.jaccard            # Market-1501 scale: N = 12,936, d = 2048
  python -m jaxreid.benchmarks.jaccard --small    # N = 2,000, d = 256: seconds
  python -m jaxreid.benchmarks.jaccard --msmt     # MSMT17 scale: N = 32,621 (reference skipped)
  python -m jaxreid.benchmarks.jaccard --msmt --no-topk-alone  # ratio to its own top-k part

Inputs: random unit features with identity structure (one random centre per identity); k1 = 30,
k2 = 6, entries kept up to eps = 0.6 (what DBSCAN reads). Each measurement runs in its own process,
so its peak memory (ru_maxrss) is its own; "above the inputs" subtracts the resident size once the
inputs exist (and, for the device passes, once jax has started). Printed: the top-k pass alone
(the k1 nearest neighbours of every image: one blocked matmul pass, the floor of the method), the
whole sparse distance and its ratio to the top-k pass; the reference (dense N x N distances,
argsort of each row, dense encoding V and Jaccard matrix, filled through an inverted index as the
public re-ranking code does), its time and memory, and the largest difference between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SCALES = {
    'small': dict(n=2000, dim=256, num_ids=150),
    'market': dict(n=12936, dim=2048, num_ids=751),
    'msmt': dict(n=32621, dim=2048, num_ids=1041),
}
K1, K2, EPS = 30, 6, 0.6


def features(n: int, dim: int, num_ids: int, seed: int = 0) -> np.ndarray:
  """float32 [n, dim] unit vectors, each a noisy copy of its identity's centre."""
  from jaxreid.benchmarks.merge import unit_features
  return np.ascontiguousarray(unit_features(n, 1, dim, num_ids, seed)[:, 0])


def _peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _resident_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def reference(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
  """Dense float32 [N, N] Jaccard distance: full matrices, row loops over an inverted index."""
  n = len(x)
  sq = np.einsum('nd,nd->n', x, x)
  dist = sq[:, None] + sq[None] - 2 * (x @ x.T)
  np.fill_diagonal(dist, -np.inf)
  rank = np.argsort(dist, axis=1, kind='stable')[:, :k1]
  np.fill_diagonal(dist, 0)

  def recip(i, k):
    fwd = rank[i, :k]
    return fwd[np.any(rank[fwd, :k] == i, axis=1)]

  kh = int(np.around(k1 / 2))
  v = np.zeros((n, n), np.float32)
  for i in range(n):
    r = recip(i, k1)
    exp = r
    for c in r:
      rc = recip(c, kh)
      if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
        exp = np.append(exp, rc)
    exp = np.unique(exp)
    w = np.exp(-(dist[i, exp] - dist[i, exp].min()))
    v[i, exp] = w / w.sum()
  del dist
  if k2 > 1:
    qe = np.zeros_like(v)
    for i in range(n):
      qe[i] = v[rank[i, :k2]].mean(0)
    v = qe
    del qe
  inv = [np.flatnonzero(v[:, c]) for c in range(n)]
  out = np.zeros((n, n), np.float32)
  for i in range(n):
    s = np.zeros(n, np.float32)
    for c in np.flatnonzero(v[i]):
      s[inv[c]] += np.minimum(v[i, c], v[inv[c], c])
    out[i] = 1 - s / (2 - s)
  return np.maximum(out, 0)


def _child(what: str, scale: str, tmp: str) -> dict:
  cfg = SCALES[scale]
  x = features(cfg['n'], cfg['dim'], cfg['num_ids'])
  if what == 'reference':
    base = _resident_bytes()
    t0 = time.perf_counter()
    ref = reference(x, K1, K2)
    seconds, peak = time.perf_counter() - t0, _peak_bytes()
    out = {'seconds': seconds, 'peak': peak, 'above_inputs': peak - base}
    ours = np.load(os.path.join(tmp, 'ours.npz'))
    dense = np.ones_like(ref)
    dense[ours['row'], ours['col']] = ours['data']
    close = ref <= EPS
    out['max_abs_diff'] = float(np.max(np.abs(np.where(close | (dense <= EPS), dense, 1) -
                                              np.where(close | (dense <= EPS), ref, 1))))
    out['pairs_within_eps'] = int(close.sum())
    return out
  from jaxreid import parallel
  from jaxreid.clustering import jaccard
  mesh = parallel.make_mesh()
  base = _resident_bytes()
  t0 = time.perf_counter()
  if what == 'topk':
    jaccard.initial_rank(x, K1, mesh=mesh)
    seconds, peak = time.perf_counter() - t0, _peak_bytes()
    return {'seconds': seconds, 'peak': peak, 'above_inputs': peak - base}
  t0, c0 = time.perf_counter(), _cpu_seconds()
  rank = jaccard.initial_rank(x, K1, mesh=mesh)
  t_rank, c_rank = time.perf_counter() - t0, _cpu_seconds() - c0
  d = jaccard.jaccard_distance(x, K1, K2, max_distance=EPS, mesh=mesh, rank=rank)
  seconds, peak = time.perf_counter() - t0, _peak_bytes()
  cpu = _cpu_seconds() - c0
  coo = d.tocoo()
  np.savez(os.path.join(tmp, 'ours.npz'), row=coo.row, col=coo.col, data=coo.data)
  # CPU seconds as well: on a shared machine they say more about the ratio than wall time.
  return {'seconds': seconds, 'topk_seconds': t_rank, 'cpu_seconds': cpu,
          'topk_cpu_seconds': c_rank, 'peak': peak, 'above_inputs': peak - base,
          'nnz': int(d.nnz)}


def _run(what: str, scale: str, tmp: str) -> dict:
  out = subprocess.run([sys.executable, '-m', 'jaxreid.benchmarks.jaccard', '--child', what,
                        '--scale', scale, '--tmp', tmp], capture_output=True, text=True,
                       check=False)
  if out.returncode:
    return {'error': (out.stderr.strip().splitlines() or ['failed'])[-1]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--small', action='store_true')
  group.add_argument('--msmt', action='store_true')
  parser.add_argument('--no-reference', action='store_true')
  parser.add_argument('--no-topk-alone', action='store_true',
                      help='skip the separate top-k run; compare with the top-k part of the distance')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  parser.add_argument('--scale', help=argparse.SUPPRESS)
  parser.add_argument('--tmp', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(_child(args.child, args.scale, args.tmp)))
    return
  scale = 'small' if args.small else 'msmt' if args.msmt else 'market'
  cfg = SCALES[scale]
  gib = lambda b: f'{b / 2 ** 30:.2f} GiB'
  print(f"k-reciprocal Jaccard distance, N = {cfg['n']:,}, d = {cfg['dim']}, k1 = {K1}, "
        f'k2 = {K2}, entries <= {EPS}')
  with tempfile.TemporaryDirectory() as tmp:
    topk = {'skipped': True} if args.no_topk_alone else _run('topk', scale, tmp)
    ours = _run('ours', scale, tmp)
    for name, r in (('top-k pass alone', topk), ('sparse Jaccard (ours)', ours)):
      if 'error' in r:
        print(f'{name}: failed: {r["error"]}')
        continue
      if 'skipped' in r:
        continue
      print(f"{name}: {r['seconds']:.1f} s, peak {gib(r['peak'])} "
            f"({gib(r['above_inputs'])} above the inputs)")
    if 'error' not in ours:
      print(f"  stored pairs {ours['nnz']:,} ({ours['nnz'] / cfg['n']:.1f} per image); "
            f"its own top-k part {ours['topk_seconds']:.1f} s, time / that part = "
            f"{ours['seconds'] / ours['topk_seconds']:.2f}x; CPU {ours['cpu_seconds']:.1f} s, "
            f"/ that part's {ours['topk_cpu_seconds']:.1f} s = "
            f"{ours['cpu_seconds'] / ours['topk_cpu_seconds']:.2f}x")
      if 'seconds' in topk:
        print(f"  time / top-k pass alone = {ours['seconds'] / topk['seconds']:.2f}x")
    if args.no_reference or scale == 'msmt':
      print('full-matrix reference: skipped (N x N float32 matrices: '
            f"{gib(4 * cfg['n'] ** 2)} each)")
      return
    ref = _run('reference', scale, tmp)
    if 'error' in ref:
      print(f'full-matrix reference: failed: {ref["error"]}')
      return
    print(f"full-matrix numpy reference: {ref['seconds']:.1f} s, peak {gib(ref['peak'])} "
          f"({gib(ref['above_inputs'])} above the inputs); "
          f"ours / reference time = {ours['seconds'] / ref['seconds']:.3f}x, memory "
          f"{ours['above_inputs'] / max(ref['above_inputs'], 1):.3f}x")
    print(f"  pairs within eps {ref['pairs_within_eps']:,}; largest difference there "
          f"{ref['max_abs_diff']:.2e}")


if __name__ == '__main__':
  main()
