"""Benchmark: blocked jax evaluation vs a torchreid-style per-query numpy loop, in the same run.

  python -m jaxreid.benchmarks.evaluation            # Market size: 3,368 x 15,913, d = 2048
  python -m jaxreid.benchmarks.evaluation --small    # a few seconds
  python -m jaxreid.benchmarks.evaluation --variants # also: host distmat path, full-sort ranking

Features are random unit vectors around one random centre per identity; pids and camids follow
Market-1501's structure (one query per identity and camera, gallery images of the same identities
in those cameras, distractors with pid 0).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxreid import evaluation


def market_like(num_query: int, num_gallery: int, num_ids: int, num_cams: int, dim: int,
                num_distractors: int, noise: float | None = None, seed: int = 0):
  """Random unit features, Market-1501-like pids/camids: (qf, gf, q_pids, g_pids, q_cams, g_cams).

  The default noise gives a rank-1 of roughly 70% and an mAP of roughly 35%, like a trained model.
  """
  rng = np.random.default_rng(seed)
  noise = 0.6 * dim ** 0.25 if noise is None else noise
  pairs = rng.permutation(num_ids * num_cams)[:num_query]  # one query per (identity, camera)
  q_pids, q_cams = pairs // num_cams + 1, pairs % num_cams
  # Every query's (identity, camera) gets at least one gallery image, the rest spread at random.
  num_real = num_gallery - num_distractors
  slots = np.concatenate([pairs, rng.choice(pairs, num_real - len(pairs))])
  g_pids = np.concatenate([slots // num_cams + 1, np.zeros(num_distractors, np.int64)])
  g_cams = np.concatenate([slots % num_cams, rng.integers(0, num_cams, num_distractors)])
  centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)

  def features(pids):
    x = centres[pids] + noise * rng.standard_normal((len(pids), dim)).astype(np.float32)
    distractor = pids == 0
    x[distractor] = rng.standard_normal((int(distractor.sum()), dim))  # each its own direction
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  return features(q_pids), features(g_pids), q_pids, g_pids, q_cams, g_cams


def numpy_distances(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
  """The baseline's distance matrix: one float32 numpy matmul (what torchreid does on the host)."""
  return ((qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2.0 * qf @ gf.T)


def loop_metrics(distmat, q_pids, g_pids, q_cams, g_cams, queries, max_rank=50):
  """The baseline: for each query argsort, drop same pid+camera, cumsum (torchreid / fast-reid)."""
  cmcs, aps, inps = [], [], []
  for q in queries:
    order = np.argsort(distmat[q])
    same = g_pids[order] == q_pids[q]
    keep = ~(same & (g_cams[order] == q_cams[q]))
    raw = same[keep]
    if not raw.any():
      continue
    hits = raw.cumsum()
    last = np.flatnonzero(raw)[-1]
    inps.append(hits[last] / (last + 1.0))
    aps.append((hits / np.arange(1, len(raw) + 1) * raw).sum() / raw.sum())
    cmcs.append(np.minimum(hits[:max_rank], 1))
  return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps))


def _timed(fn, *args, **kwargs):
  """(fn's result, seconds); every function timed here returns host values, so no async work."""
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--small', action='store_true', help='1,000 x 5,000, d = 256')
  p.add_argument('--baseline-queries', type=int, default=400,
                 help='queries the per-query loop is timed on (then extrapolated)')
  p.add_argument('--block-size', type=int, default=1024, help='query rows per block')
  p.add_argument('--variants', action='store_true',
                 help='also time evaluate(distmat) on a host matrix and the full-sort ranking')
  args = p.parse_args(argv)
  if args.small:
    sizes = dict(num_query=1000, num_gallery=5000, num_ids=250, num_cams=6, dim=256,
                 num_distractors=900)
  else:
    sizes = dict(num_query=3368, num_gallery=15913, num_ids=750, num_cams=6, dim=2048,
                 num_distractors=2793)
  qf, gf, qp, gp, qc, gc = market_like(**sizes)
  devices = jax.devices()
  print(f'evaluation at {"small" if args.small else "Market"} size: {len(qf)} queries x '
        f'{len(gf)} gallery, d = {qf.shape[1]}, {len(devices)} {devices[0].platform} device(s), '
        f'block {args.block_size} rows')

  kwargs = dict(max_rank=50, block_size=args.block_size)
  _, first = _timed(evaluation.evaluate_features, qf, gf, qp, gp, qc, gc, **kwargs)
  metrics, ours = _timed(evaluation.evaluate_features, qf, gf, qp, gp, qc, gc, **kwargs)
  print(f'  metrics: {evaluation.format_results(metrics)} '
        f'({metrics["num_valid_queries"]} valid queries)')
  print(f'  ours, evaluate_features (distances + ranking on device): {ours:.2f} s '
        f'(first call, with compilation: {first:.2f} s)')

  distmat, base_dist = _timed(numpy_distances, qf, gf)
  subset = np.arange(min(args.baseline_queries, len(qf)))
  (_, base_map, _), base_loop = _timed(loop_metrics, distmat, qp, gp, qc, gc, subset)
  per_query = base_loop / len(subset)
  baseline = base_dist + per_query * len(qf)
  print(f'  baseline: numpy distances {base_dist:.2f} s + per-query loop {1e3 * per_query:.2f} '
        f'ms/query, timed on {len(subset)} queries and extrapolated to {len(qf)}: '
        f'{per_query * len(qf):.2f} s -> {baseline:.2f} s')
  print(f'  ratio baseline / ours: {baseline / ours:.2f}x')
  check = evaluation.evaluate(distmat[subset], qp[subset], gp, qc[subset], gc, **kwargs)
  print(f'  check on those {len(subset)} queries: mAP ours {100 * check["mAP"]:.3f}% vs loop '
        f'{100 * base_map:.3f}%')

  if args.variants:
    evaluation.evaluate(distmat, qp, gp, qc, gc, **kwargs)  # compiles
    _, host = _timed(evaluation.evaluate, distmat, qp, gp, qc, gc, **kwargs)
    print(f'  variant: evaluate(distmat) on the host matrix (ranking only, rows shipped per '
          f'block): {host:.2f} s; ratio per-query loop / this: {per_query * len(qf) / host:.2f}x')
    evaluation.pairwise_sq_distances(qf[:args.block_size], gf, args.block_size)  # compiles
    _, dist_only = _timed(evaluation.pairwise_sq_distances, qf, gf, args.block_size)
    print(f'  variant: pairwise_sq_distances alone (to host): {dist_only:.2f} s')
    # The full sort is slow on CPU: compare both rankings on the first 256 queries only.
    few = slice(0, 256)
    part = (qf[few], gf, qp[few], gp, qc[few], gc)
    evaluation.evaluate_features(*part, **kwargs)
    _, count = _timed(evaluation.evaluate_features, *part, **kwargs)
    saved = evaluation.SORT_ABOVE
    try:
      evaluation.SORT_ABOVE = 0  # every block ranks by a full stable sort
      evaluation.evaluate_features(*part, **kwargs)
      _, sort = _timed(evaluation.evaluate_features, *part, **kwargs)
    finally:
      evaluation.SORT_ABOVE = saved
    print(f'  variant: on {few.stop} queries, ranking by a full stable sort on device {sort:.2f} s '
          f'vs by counting {count:.2f} s ({sort / count:.2f}x)')


if __name__ == '__main__':
  main()
