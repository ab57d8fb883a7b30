"""Benchmark: images/s of the re-ID train step on one CPU device, ours against PyTorch's

  python -m jaxreid.benchmarks.train_step            # ResNet-18, -50, EfficientNet-Lite0 at 128x64 and 256x128
  python -m jaxreid.benchmarks.train_step --arch efficientnet_lite0 --batch 32   # one network
  python -m jaxreid.benchmarks.train_step --quick    # ResNet-18 at 128x64, fewer steps (~1 min)
  python -m jaxreid.benchmarks.train_step --layers   # forward + backward time of each conv shape
  python -m jaxreid.benchmarks.train_step --quick --single-thread   # steadier under load

Ours: jaxreid.reid.train.make_train_step (forward, repelled loss, backward, SGD, table update) on
a one-device mesh, once with config.model.conv='native' (flax.linen.Conv everywhere: the
baseline) and once with the configured 'auto' choice. Torch (when installed): the same ResNet,
head, loss and nesterov SGD step written here, same batch and input size, measured in the same
run, the steps of all three taken in turns (EfficientNet-Lite0's torch model is the PyPI package
efficientnet-lite-pytorch, when installed). Each configuration prints images/s of each and
`ratio <ours auto / torch>` (>= 1: ours is faster). The machine's load moves all numbers; the
ratio, taken in turns, is the figure to read (torch's threads suffer most on a loaded machine).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from jaxreid import configlib, parallel
from jaxreid.benchmarks import optional_torch, use_one_xla_thread, use_the_runs_allocator
from jaxreid.reid import fast_conv, resnet, train

CONFIGS = [('resnet18', 128, 64), ('resnet18', 256, 128), ('resnet50', 128, 64),
           ('resnet50', 256, 128), ('efficientnet_lite0', 128, 64), ('efficientnet_lite0', 256, 128)]
NUM_CLASSES = 64


def bench_config(arch: str, height: int, width: int, batch: int, conv: str):
  """The default config with the benchmark's network, input size, batch and conv mode."""
  common = configlib.load_sibling(
      str(pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'x.py'), 'common')
  c = common.get_config()
  c.model.arch, c.model.conv = arch, conv
  c.data.height, c.data.width = height, width
  c.train.batch_size = batch
  return c


def _batches(n: int, batch: int, height: int, width: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8),
           'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)} for _ in range(n)]


def ours_runner(cfg, steps: int):
  """A callable running one of `steps` distinct batches through our train step (blocking)."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  box = [train.with_learning_rate(
      train.create_train_state(cfg, NUM_CLASSES, jax.random.key(0), mesh), 0.01)]
  step = train.make_train_step(cfg, mesh)
  batches = [parallel.shard_batch(b, mesh) for b in
             _batches(steps, cfg.train.batch_size, cfg.data.height, cfg.data.width)]

  def run(i: int) -> None:
    box[0], m = step(box[0], batches[i % steps])   # the step donates its state
    jax.block_until_ready((box[0], m))
  return run


def _torch_head(torch, trunk, cin: int, embedding_dim: int):
  """BUC's head on a torch trunk: Linear, BatchNorm1d, L2-normalise, dropout."""
  nn = torch.nn

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.trunk = trunk
      self.embed = nn.Linear(cin, embedding_dim)
      self.embed_bn = nn.BatchNorm1d(embedding_dim)
      self.drop = nn.Dropout(0.5)

    def forward(self, x):
      e = nn.functional.normalize(self.embed_bn(self.embed(self.trunk(x))))
      return self.drop(e)

  return Net()


def torch_net(torch, arch: str, embedding_dim: int):
  """The torch network of `arch` plus BUC's head; None if its reference package is missing.

  ResNets: torchvision's layout (v1.5, no fc), built here since torchvision is absent.
  """
  nn = torch.nn
  if arch == 'efficientnet_lite0':
    try:
      from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
      return None
    ref = EfficientNet.from_name('efficientnet-lite0')
    trunk = nn.Sequential()
    trunk.forward = lambda x: ref._avg_pooling(ref.extract_features(x)).flatten(1)
    trunk.ref = ref
    return _torch_head(torch, trunk, 1280, embedding_dim)
  kind, blocks, widths, stem = resnet.arch_spec(arch)
  expansion = resnet.EXPANSION[kind]

  class Block(nn.Module):
    def __init__(self, cin, planes, stride):
      super().__init__()
      cout = planes * expansion
      if kind == 'basic':
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes))
      else:
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
      self.short = nn.Identity()
      if stride != 1 or cin != cout:
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))

    def forward(self, x):
      return torch.relu(self.body(x) + self.short(x))

  layers = [nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1)]
  cin = stem
  for stage, (n, planes) in enumerate(zip(blocks, widths)):
    for b in range(n):
      layers.append(Block(cin, planes, 2 if b == 0 and stage > 0 else 1))
      cin = planes * expansion

  return _torch_head(torch, nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin,
                     embedding_dim)


def torch_runner(torch, cfg, steps: int):
  """The same step in PyTorch (forward, table loss, backward, nesterov SGD) as a callable."""
  net = torch_net(torch, cfg.model.arch, cfg.model.embedding_dim)
  if net is None:
    return None
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                        nesterov=True)
  table = torch.zeros(NUM_CLASSES, cfg.model.embedding_dim)
  mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
  std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
  batches = _batches(steps, cfg.train.batch_size, cfg.data.height, cfg.data.width)

  def step(b):
    x = (torch.from_numpy(b['image']).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(b['label']).long()
    e = net(x)
    loss = torch.nn.functional.cross_entropy(e @ table.t() / cfg.memory.temperature, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
      table[y] = e.detach()
    return float(loss.detach())

  return lambda i: step(batches[i % steps])


def time_layers(batch: int) -> None:
  """Forward + backward ms of each ResNet convolution shape, native against the matmul form."""
  shapes = [  # (height, width, in, out, kernel, stride) of layers in ResNet-18/50 at 128x64
      (64, 32, 64, 64, 3, 1), (32, 16, 64, 64, 3, 1), (16, 8, 128, 128, 3, 1),
      (8, 4, 256, 256, 3, 1), (4, 2, 512, 512, 3, 1), (32, 16, 64, 128, 3, 2),
      (16, 8, 128, 256, 3, 2), (8, 4, 256, 512, 3, 2), (32, 16, 64, 128, 1, 2),
      (64, 32, 64, 256, 1, 1), (8, 4, 1024, 256, 1, 1), (4, 2, 512, 2048, 1, 1),
      (128, 64, 3, 64, 7, 2)]
  rng = np.random.default_rng(0)
  for h, w, cin, cout, k, s in shapes:
    x = rng.normal(size=(batch, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    pad = ((k // 2, k // 2),) * 2
    times = []
    for mode in ('native', 'matmul'):
      conv = fast_conv.FastConv(cout, (k, k), (s, s), pad, use_bias=False, mode=mode)
      f = jax.jit(jax.grad(lambda x, v, conv=conv: jax.numpy.sum(conv.apply(v, x) ** 2),
                           argnums=(0, 1)))
      v = {'params': {'kernel': kernel}}
      jax.block_until_ready(f(x, v))
      start, n = time.perf_counter(), 0
      while n < 2 or time.perf_counter() - start < 0.5:
        jax.block_until_ready(f(x, v))
        n += 1
      times.append((time.perf_counter() - start) / n * 1e3)
    out = fast_conv.output_pixels((h, w), (k, k), (s, s), pad)
    print(f'{h}x{w} {cin}->{cout} {k}x{k}/{s} (out {out} px): native {times[0]:.1f} ms, '
          f'matmul {times[1]:.1f} ms, speed-up {times[0] / times[1]:.2f}', flush=True)


def measure(runners: dict, steps: int, batch: int) -> dict:
  """Images/s of each runner: one warm-up (compiling) step, then `steps` steps taken in turns,
  so that a change in the machine's load hits every runner alike; median step time."""
  for run in runners.values():
    run(0)
  times = {k: [] for k in runners}
  for i in range(steps):
    for k, run in runners.items():
      start = time.perf_counter()
      run(i + 1)
      times[k].append(time.perf_counter() - start)
  return {k: batch / float(np.median(t)) for k, t in times.items()}


def main(argv=None) -> None:
  """Runs the benchmark and prints images/s and `ratio <x>` per configuration."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='ResNet-18 at 128x64 only, 3 timed steps')
  p.add_argument('--layers', action='store_true', help='time each convolution shape instead')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--arch', default=None, help='only this network (e.g. efficientnet_lite0)')
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 3 quick, 5 full)')
  p.add_argument('--conv', default='auto', choices=fast_conv.CONV_MODES,
                 help='our convolution mode compared with torch (native is always measured too)')
  p.add_argument('--single-thread', action='store_true',
                 help='one thread for XLA and torch: steadier numbers on a loaded machine')
  args = p.parse_args(argv)
  use_the_runs_allocator()
  if args.single_thread:
    use_one_xla_thread()
  if args.layers:
    time_layers(args.batch)
    return
  torch = optional_torch(args.single_thread)
  steps = args.steps or (3 if args.quick else 5)
  configs = CONFIGS[:1] if args.quick else CONFIGS
  if args.arch:
    configs = [c for c in CONFIGS if c[0] == args.arch][:1 if args.quick else None]
    if not configs:
      p.error(f'--arch={args.arch}: expected one of {sorted({c[0] for c in CONFIGS})}')
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, '
        f'median of {steps} timed steps, interleaved'
        + (', single thread' if args.single_thread else '')
        + (f', torch {torch.__version__}' if torch else ', no torch'))
  for arch, h, w in configs:
    runners = {f'ours {mode}': ours_runner(bench_config(arch, h, w, args.batch, mode), steps)
               for mode in dict.fromkeys(('native', args.conv))}
    reference = torch and torch_runner(torch, bench_config(arch, h, w, args.batch, args.conv),
                                       steps)
    if reference:
      runners['torch'] = reference
    rate = measure(runners, steps, args.batch)
    print(f'{arch} {h}x{w}: ' + ', '.join(f'{k} {v:.2f} img/s' for k, v in rate.items()),
          flush=True)
    if reference:
      print(f'ratio {rate[f"ours {args.conv}"] / rate["torch"]:.2f}', flush=True)
    else:
      print('(torch or the reference model not installed: no ratio)', flush=True)

if __name__ == '__main__':
  main()
