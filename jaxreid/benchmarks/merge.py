"""Benchmark: one exact merge step vs the bare matmul of the same shapes and a full-matrix reference

  python -m jaxreid.benchmarks.merge            # Market-1501 scale: N = 12,936, L = 6, d = 2048
  python -m jaxreid.benchmarks.merge --small    # N = 2,000, L = 6, d = 256: a few seconds
  python -m jaxreid.benchmarks.merge --msmt     # MSMT17 scale: N = 32,621, L = 15 (no reference)

Inputs: random unit features with identity structure (one random centre per identity, reals
around it, each real's L-1 fakes around the real) in one aligned [N, L, d] block, passed to
merge_step as its slot views (--separate-arrays: two unaligned arrays, costing ours one copy);
labels of step 0 (image i in cluster i), m = int(0.05 N) merges, lambda = 0.003. Each measurement
runs in its own process, so its peak memory (ru_maxrss) is its own; "above the inputs" subtracts
the resident size once the inputs exist (for ours, once jax is imported and started too, as in any
jaxreid run). Printed: our merge time (first call, compilation included); the same merge from
features already on the devices as replicated arrays (cluster.features_on_device) and the time
ratio host / device inputs; the bare matmul of the same shapes in the same blocks (the floor of
any exact method) and the ratio; the numpy full-matrix reference (N x N*L distances, argsort of
all pairs, union-find), its time and memory; and whether the labels agree.
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
    'small': dict(n=2000, num_sets=6, dim=256, num_ids=150),
    'market': dict(n=12936, num_sets=6, dim=2048, num_ids=751),
    'msmt': dict(n=32621, num_sets=15, dim=2048, num_ids=1041),
}
_CHUNK = 1024


def unit_features(n: int, num_sets: int, dim: int, num_ids: int, seed: int = 0) -> np.ndarray:
  """Support features S [n, num_sets, dim] (slot 0 the real): random unit vectors with identity
  structure, in one aligned block (as feature extraction can deliver them), made in chunks so the
  peak memory is the array itself."""
  from jaxreid.support_sets import aligned_empty
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, num_ids, n)
  centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
  support = aligned_empty((n, num_sets, dim))
  for s in range(0, n, _CHUNK):
    r = centres[ids[s:s + _CHUNK]] + rng.standard_normal((len(ids[s:s + _CHUNK]), dim),
                                                         dtype=np.float32)
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    f = r[:, None] + (0.5 / np.sqrt(dim)) * rng.standard_normal((len(r), num_sets - 1, dim),
                                                                dtype=np.float32)
    support[s:s + _CHUNK, 0] = r
    support[s:s + _CHUNK, 1:] = f / np.linalg.norm(f, axis=-1, keepdims=True)
  return support


def _resident_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reference_merge(reals: np.ndarray, fakes: np.ndarray, num_to_merge: int, lam: float
                    ) -> tuple[np.ndarray, float]:
  """The full-matrix procedure at step 0 in numpy float32: (labels, seconds of its matmul)."""
  n, dim = reals.shape
  flat = fakes.reshape(-1, dim)
  start = time.perf_counter()
  cross = reals @ flat.T                                     # N x N*(L-1)
  rr = reals @ reals.T
  matmul = time.perf_counter() - start
  sq_r, sq_f = (reals * reals).sum(1), (flat * flat).sum(1)
  cross *= -2
  cross += sq_f[None]
  a = cross.reshape(n, n, -1).min(-1)
  del cross
  rr *= -2
  rr += sq_r[None]
  np.minimum(a, rr, out=a)
  a += sq_r[:, None]
  del rr
  d = np.minimum(a, a.T) + np.float32(lam) * 2  # every cluster has one image at step 0
  for i in range(n):
    d[i, :i + 1] = np.inf                         # pairs i < j only; same cluster = same image
  order = np.argsort(d, axis=None, kind='stable')  # ties by (i, j): row-major flat order
  del d, a
  label = np.arange(n)
  merges = 0
  for flat_ij in order:
    i, j = divmod(int(flat_ij), n)
    if label[i] != label[j]:
      small, large = min(label[i], label[j]), max(label[i], label[j])
      label[label == large] = small
      merges += 1
      if merges == num_to_merge:
        break
  return np.unique(label, return_inverse=True)[1], matmul


def _bare_matmul(support: np.ndarray, block: int, dtype: str, rows: int) -> None:
  """The matmul of our kernel alone: [block, d] x [d, N * L] for every row block."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  dt = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  n, num_sets, dim = support.shape
  flat = jnp.asarray(support.reshape(-1, dim)).astype(dt)

  @jax.jit
  def dot(flat, start):
    x = lax.dynamic_slice_in_dim(flat.reshape(n, num_sets, dim), start, block)[:, 0]
    return lax.dot_general(x, flat, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)

  out = None
  for start in range(0, rows, block):
    out = dot(flat, min(start, n - block))
  jax.block_until_ready(out)


def _worker(args) -> None:
  """Runs one measurement in this process and prints it as JSON."""
  scale = dict(SCALES[args.scale], **({'n': args.images} if args.images else {}))
  m = int(scale['n'] * 0.05)
  support = unit_features(**scale)
  n = len(support)
  if args.separate_arrays or args.worker == 'reference':
    # Two separate, unaligned arrays: merge_step assembles S once (a copy); the reference wants
    # exactly these.
    reals, fakes = support[:, 0].copy(), support[:, 1:].copy()
    del support
  else:
    reals, fakes = support[:, 0], support[:, 1:]
  if args.worker != 'reference':
    # A jaxreid run has jax up already: its start-up is not part of the merge.
    import jax
    import jaxreid.clustering  # noqa: F401
    from jaxreid import support_sets
    jax.devices()
  base = _resident_bytes()
  result = {}
  start = time.perf_counter()
  if args.worker == 'ours' and args.probe_rows:
    from jaxreid.clustering import distance
    kernel = distance.SupportSetKernel(support_sets.support_array(reals, fakes), np.arange(n),
                                       np.ones(n), 0.003, block_size=args.block_size,
                                       matmul_dtype=args.dtype)
    kernel.topk(np.arange(args.probe_rows), args.topk)
    result.update(passes=1, final_k=args.topk, recomputed_rows=0, block=kernel.block)
    labels = None
  elif args.worker in ('ours', 'ours_device'):
    from jaxreid.clustering import distance, merge_clusters
    if args.worker == 'ours_device':
      # As with cluster.features_on_device: the merge starts from replicated device arrays, the
      # slices algorithm1 passes (their transfer is feature extraction's, not the merge's).
      from jaxreid import parallel
      on_device = jax.device_put(support_sets.support_array(reals, fakes),
                                 parallel.replicated(parallel.make_mesh()))
      del reals, fakes
      reals, fakes = jax.block_until_ready((on_device[:, 0], on_device[:, 1:]))
      del on_device
      base = _resident_bytes()
      start = time.perf_counter()
    res = merge_clusters(reals, fakes, np.arange(n), m, 0.003, topk=args.topk,
                         block_size=args.block_size, matmul_dtype=args.dtype)
    result.update(passes=res.passes, final_k=res.final_k, recomputed_rows=res.recomputed_rows,
                  block=distance.block_rows(n, args.block_size))
    labels = res.labels
  elif args.worker == 'matmul':
    from jaxreid.clustering import distance
    _bare_matmul(support_sets.support_array(reals, fakes), distance.block_rows(n, args.block_size),
                 args.dtype, args.probe_rows or n)
    labels = None
  else:
    labels, result['matmul_seconds'] = reference_merge(reals, fakes, m, 0.003)
  result.update(seconds=time.perf_counter() - start, base=base, peak=_peak_bytes())
  if labels is not None:
    np.save(args.labels_out, labels)
  print('RESULT ' + json.dumps(result))


def _run(worker: str, args, labels_out: str = '') -> dict:
  cmd = [sys.executable, '-m', 'jaxreid.benchmarks.merge', '--worker', worker,
         '--scale', args.scale, '--topk', str(args.topk), '--block-size', str(args.block_size),
         '--dtype', args.dtype, '--labels-out', labels_out, '--images', str(args.images),
         '--probe-rows', str(args.probe_rows)] + ['--separate-arrays'] * args.separate_arrays
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    raise RuntimeError(f'{worker} run failed: {proc.stderr.strip().splitlines()[-1:]}')
  return json.loads(lines[-1][len('RESULT '):])


def _gb(x: float) -> str:
  return f'{x / 2**30:.2f} GiB'


def main(argv=None) -> None:
  """Parses the command line; runs one worker, or all of them and prints the comparison."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--small', action='store_true', help='N = 2,000, d = 256: a few seconds')
  p.add_argument('--msmt', action='store_true', help='MSMT17 scale; the reference is skipped')
  p.add_argument('--images', type=int, default=0, help='override N of the chosen scale')
  p.add_argument('--topk', type=int, default=32)
  p.add_argument('--block-size', type=int, default=512)
  p.add_argument('--bf16', action='store_true', help='bfloat16 matmuls (for accelerators)')
  p.add_argument('--no-reference', action='store_true', help='skip the full-matrix reference')
  p.add_argument('--no-device-inputs', action='store_true',
                 help='skip the merge from features already on the devices')
  p.add_argument('--probe-rows', type=int, default=0,
                 help='a probe: run the kernel (no walk) and the bare matmul on the first rows '
                      'only, at full N and memory; times are also extrapolated to all N rows')
  p.add_argument('--separate-arrays', action='store_true',
                 help='pass reals and fakes as two unaligned arrays (costs ours one copy of them)')
  p.add_argument('--worker', choices=['ours', 'ours_device', 'matmul', 'reference'],
                 help=argparse.SUPPRESS)
  p.add_argument('--scale', choices=sorted(SCALES), help=argparse.SUPPRESS)
  p.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)
  p.add_argument('--labels-out', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    _worker(args)
    return
  args.scale = 'msmt' if args.msmt else 'small' if args.small else 'market'
  args.dtype = 'bfloat16' if args.bf16 else 'float32'
  s = dict(SCALES[args.scale], **({'n': args.images} if args.images else {}))
  n, num_sets, dim = s['n'], s['num_sets'], s['dim']
  import jax
  devices = jax.devices()
  print(f'merge step at {args.scale} scale: N = {n}, L = {num_sets}, d = {dim}, '
        f'm = {int(0.05 * n)}, lambda = 0.003, topk {args.topk}, {args.dtype} matmuls, '
        f'{len(devices)} {devices[0].platform} device(s)')
  print(f'  inputs: {_gb(4 * n * num_sets * dim)} of features (reals + fakes)')

  with tempfile.TemporaryDirectory() as tmp:
    ours = _run('ours', args, os.path.join(tmp, 'ours.npy'))
    if args.probe_rows:
      print(f'  PROBE on the first {args.probe_rows} rows (kernel only, no walk); '
            f'times x {n / args.probe_rows:.1f} extrapolate to all rows')
    what = 'kernel only' if args.probe_rows else 'merge_clusters'
    print(f'  ours ({what}, first call incl. compilation): {ours["seconds"]:.1f} s; '
          f'block {ours["block"]} rows, {ours["passes"]} kernel pass(es), largest k '
          f'{ours["final_k"]}, {ours["recomputed_rows"]} rows recomputed; peak memory '
          f'{_gb(ours["peak"])}, {_gb(ours["peak"] - ours["base"])} above the inputs')
    if not args.probe_rows and not args.no_device_inputs:
      dev = _run('ours_device', args, os.path.join(tmp, 'ours_device.npy'))
      same = np.array_equal(np.load(os.path.join(tmp, 'ours.npy')),
                            np.load(os.path.join(tmp, 'ours_device.npy')))
      print(f'  ours from device arrays (cluster.features_on_device): {dev["seconds"]:.1f} s; '
            f'host arrays / device arrays: {ours["seconds"] / dev["seconds"]:.2f}x; labels '
            f'identical: {same}')
    bare = _run('matmul', args)
    rows = args.probe_rows or n
    print(f'  bare matmul of the same shapes ([N, d] x [d, N*L] in the same row blocks, jax): '
          f'{bare["seconds"]:.1f} s  ({2 * rows * n * num_sets * dim / bare["seconds"] / 1e9:.0f} '
          f'GFLOP/s)')
    print(f'  ratio ours / bare matmul: {ours["seconds"] / bare["seconds"]:.2f}x')
    if args.probe_rows:
      scale = n / args.probe_rows
      print(f'  extrapolated to all {n} rows: ours {ours["seconds"] * scale:.0f} s, bare matmul '
            f'{bare["seconds"] * scale:.0f} s')
    if args.msmt or args.no_reference or args.probe_rows:
      need = 4 * n * n * (num_sets - 1) + 12 * n * n
      print(f'  reference skipped: its N x N*L float32 distances alone need {_gb(need)}')
      return
    ref = _run('reference', args, os.path.join(tmp, 'ref.npy'))
    print(f'  reference (numpy: N x N*L distances, argsort of all pairs, union-find): '
          f'{ref["seconds"]:.1f} s (its matmul {ref["matmul_seconds"]:.1f} s); peak memory '
          f'{_gb(ref["peak"])}, {_gb(ref["peak"] - ref["base"])} above the inputs')
    print(f'  memory above the inputs, reference / ours: '
          f'{(ref["peak"] - ref["base"]) / max(ours["peak"] - ours["base"], 1):.1f}x; '
          f'time reference / ours: {ref["seconds"] / ours["seconds"]:.2f}x')
    same = np.array_equal(np.load(os.path.join(tmp, 'ours.npy')),
                          np.load(os.path.join(tmp, 'ref.npy')))
    print(f'  labels agree with the reference: {same}')


if __name__ == '__main__':
  main()
