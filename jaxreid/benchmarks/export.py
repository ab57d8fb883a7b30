"""Benchmark: the exported ONNX model under onnxruntime (one thread) against FeatureExtractor on CPU.

  python -m jaxreid.benchmarks.export            # ResNet-50 at 256 x 128, 128 images
  python -m jaxreid.benchmarks.export --small    # ResNet-18 at 128 x 64, 64 images: a minute

Both run in this process on the same uint8 images and the same (initialised, saved) model, after a
warm-up call; the deserialized JAX serving file is timed too. Images/s over the whole set, best of
--repeats. FeatureExtractor uses XLA's own thread pool (every core); onnxruntime is held to one.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np


def _best_rate(fn, images: np.ndarray, repeats: int) -> float:
  fn(images)   # warm-up: compilation, session set-up
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn(images)
    best = min(best, time.perf_counter() - start)
  return len(images) / best


def cpu_name() -> str:
  """The processor's model name (lscpu's), else the architecture."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--small', action='store_true', help='ResNet-18, 128 x 64, 64 images')
  parser.add_argument('--arch', default=None)
  parser.add_argument('--images', type=int, default=None)
  parser.add_argument('--batch_size', type=int, default=32, help='of both runtimes')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  arch = args.arch or ('resnet18' if args.small else 'resnet50')
  height, width = (128, 64) if args.small else (256, 128)
  num = args.images or (64 if args.small else 128)

  import onnxruntime as ort

  from jaxreid import configlib, serving
  from jaxreid.reid import FeatureExtractor, export, model
  common = configlib.load_sibling(os.path.join(os.path.dirname(__file__), '..', '..', 'configs',
                                               'x.py'), 'common')
  cfg = common.get_config()
  cfg.model.arch = arch
  cfg.data.height, cfg.data.width = height, width
  cfg.eval.batch_size = args.batch_size
  net = model.build_model(cfg.model)
  variables = model.init_variables(net, jax.random.key(0), height, width)
  images = np.random.default_rng(0).integers(0, 256, (num, height, width, 3), dtype=np.uint8)

  with tempfile.TemporaryDirectory() as tmp:
    export.save_model(os.path.join(tmp, 'model'), variables, cfg)
    extractor = FeatureExtractor(os.path.join(tmp, 'model'))
    onnx_path, jax_path = os.path.join(tmp, 'f.onnx'), os.path.join(tmp, 'f.jax')
    serving.export_model(os.path.join(tmp, 'model'), 'onnx', onnx_path)
    serving.export_model(os.path.join(tmp, 'model'), 'jax', jax_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])
    with open(jax_path, 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))

    def in_batches(run):
      def go(x):
        return np.concatenate([run(x[i:i + args.batch_size])
                               for i in range(0, len(x), args.batch_size)])
      return go

    onnx_fn = in_batches(lambda b: session.run(['feature'], {'images': b})[0])
    jax_fn = in_batches(lambda b: np.asarray(exported.call(b)))
    diff = float(np.abs(onnx_fn(images[:8]) - extractor(images[:8])).max())
    base = _best_rate(extractor, images, args.repeats)
    onnx_rate = _best_rate(onnx_fn, images, args.repeats)
    jax_rate = _best_rate(jax_fn, images, args.repeats)

  cpu = cpu_name()
  print(f'{arch} at {height}x{width}, {num} images, batch {args.batch_size}, {os.cpu_count()} '
        f'cores ({cpu}), jax devices: {jax.device_count()}')
  print(f'FeatureExtractor (XLA:CPU, all cores)   {base:8.1f} images/s')
  print(f'ONNX, onnxruntime 1 thread             {onnx_rate:8.1f} images/s   '
        f'{onnx_rate / base:.2f}x FeatureExtractor')
  print(f'JAX serving file (jax.export, XLA:CPU) {jax_rate:8.1f} images/s   '
        f'{jax_rate / base:.2f}x FeatureExtractor')
  print(f'max |ONNX - FeatureExtractor| on 8 images: {diff:.2e}')


if __name__ == '__main__':
  main()
