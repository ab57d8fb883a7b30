"""Benchmark: images/s and MFU of the train steps at the paper's size on one accelerator.

  python -m jaxreid.benchmarks.accelerator [--peak-tflops 989] [--steps 20]

The re-ID step (ResNet-50 and EfficientNet-Lite0 at 256x128; the paper's batch 16 and a larger
one) in float32 and bfloat16 (`config.model.dtype`), and the StarGAN's D and G steps at the
paper's 256x128, batch 16 (float32: the StarGAN has no bfloat16 mode). Each row prints images/s,
the ratio of bfloat16 to float32 measured in the same run, and MFU: the step's FLOPs (XLA's cost
analysis; for the re-ID step 3x its forward pass, the usual forward + backward count) per second
over --peak-tflops (the chip's dense bfloat16 peak; float32 rows are read against it too).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxreid import parallel
from jaxreid.benchmarks import stargan_step, train_step
from jaxreid.camstyle import train as gan_train
from jaxreid.reid import model as reid_model
from jaxreid.reid import train


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def _time(run, steps: int) -> float:
  for i in range(2):   # compile and warm up
    run(i)
  t0 = time.perf_counter()
  for i in range(steps):
    run(i)
  return (time.perf_counter() - t0) / steps


def reid_row(arch: str, batch: int, dtype: str, steps: int) -> dict:
  cfg = train_step.bench_config(arch, 256, 128, batch, 'native')
  cfg.model.dtype = dtype
  if arch == 'efficientnet_lite0':
    cfg.model.embedding_dim = 1280
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train.create_train_state(cfg, train_step.NUM_CLASSES, jax.random.key(0), mesh)
  net = reid_model.build_model(cfg.model)
  x = np.zeros((batch, 256, 128, 3), np.float32)
  forward = _flops(jax.jit(net.apply).lower(state.variables, x).compile())
  seconds = _time(train_step.ours_runner(cfg, 4), steps)
  return {'what': f'{arch} 256x128 batch {batch}', 'dtype': dtype, 'seconds': seconds,
          'images': batch, 'flops': None if forward is None else 3 * forward}


def stargan_rows(steps: int) -> list[dict]:
  cfg = stargan_step.bench_config('paper', 'native')
  d_run, g_run = stargan_step.ours_runners(cfg, 4)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = jax.device_put(gan_train.init_state(cfg, stargan_step.NUM_CAMERAS),
                         parallel.replicated(mesh))
  gan = gan_train.make_train_step(cfg, stargan_step.NUM_CAMERAS, 10**6, 0, mesh)
  batch = parallel.shard_batch(stargan_step._batches(1, cfg.camstyle)[0], mesh)  # pylint: disable=protected-access
  rows = []
  for name, f, run in (('D step', gan.d_step, d_run), ('G step', gan.g_step, g_run)):
    flops = _flops(f.lower(state, batch).compile())
    rows.append({'what': f'StarGAN {name} 256x128 batch {cfg.camstyle.batch_size}',
                 'dtype': 'float32', 'seconds': _time(run, steps),
                 'images': cfg.camstyle.batch_size, 'flops': flops})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--peak-tflops', type=float, default=989.0)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--archs', default='resnet50,efficientnet_lite0')
  parser.add_argument('--batches', default='16,64')
  parser.add_argument('--no-stargan', action='store_true')
  args = parser.parse_args(argv)
  print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}',
        flush=True)
  for arch in args.archs.split(','):
    for batch in map(int, args.batches.split(',')):
      pair = [reid_row(arch, batch, dtype, args.steps) for dtype in ('float32', 'bfloat16')]
      pair[1]['ratio'] = pair[0]['seconds'] / pair[1]['seconds']
      for r in pair:
        _print(r, args.peak_tflops)
  for r in ([] if args.no_stargan else stargan_rows(args.steps)):
    _print(r, args.peak_tflops)


def _print(r: dict, peak: float) -> None:
  ips = r['images'] / r['seconds']
  mfu = '-' if r['flops'] is None else f"{100 * r['flops'] / r['seconds'] / (peak * 1e12):.1f}%"
  ratio = f"  bf16/fp32 {r['ratio']:.2f}x" if 'ratio' in r else ''
  print(f"{r['what']:45s} {r['dtype']:9s} {ips:9.1f} img/s  {1e3 * r['seconds']:7.2f} ms/step  "
        f"MFU {mfu}{ratio}", flush=True)


if __name__ == '__main__':
  main()
