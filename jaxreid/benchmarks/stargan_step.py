"""Benchmark: StarGAN training iterations/s on one CPU device, conv='auto' vs 'native' and torch

  python -m jaxreid.benchmarks.stargan_step                  # 64x32 synthetic and 256x128 paper
  python -m jaxreid.benchmarks.stargan_step --quick          # 64x32 synthetic only
  python -m jaxreid.benchmarks.stargan_step --layers         # each G / D layer, native vs matmul
  python -m jaxreid.benchmarks.stargan_step --single-thread  # steadier under load
  python -m jaxreid.benchmarks.stargan_step --no-native      # skip the baseline (minutes per
                                                             # D step at 256x128)

Ours: jaxreid.camstyle.train.make_train_step (the D update with its gradient penalty, and the G
update) on a one-device mesh, once with config.camstyle.conv='native' (the baseline) and once with
'auto'. Torch (when installed): the same networks, losses and Adam written here, same shapes. The D
and G steps of all runners are taken in turns, so that a change in the machine's load hits every
runner alike; the median step times give iterations/s = 1 / (D + G / n_critic) at the config's
n_critic. Each configuration prints `ratio <auto / native>` and, with torch, `torch ratio <auto /
torch>` (>= 1: ours is faster).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxreid import configlib, parallel
from jaxreid.benchmarks import optional_torch, use_one_xla_thread, use_the_runs_allocator
from jaxreid.camstyle import stargan, train

NUM_CAMERAS = 6
_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / 'configs'


def bench_config(name: str, conv: str):
  """`name` ('synthetic': 64x32 CPU-sized, 'paper': 256x128 reference) with `conv`."""
  c = configlib.load_sibling(str(_CONFIGS / 'x.py'), {'synthetic': 'synthetic',
                                                       'paper': 'common'}[name]).get_config()
  c.camstyle.conv = conv
  return c


def _batches(n: int, c, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (c.batch_size, c.height, c.width, 3), dtype=np.uint8),
           'camid': rng.integers(0, NUM_CAMERAS, c.batch_size).astype(np.int32),
           'target': rng.integers(0, NUM_CAMERAS, c.batch_size).astype(np.int32)}
          for _ in range(n)]


def ours_runners(config, steps: int) -> tuple:
  """(D step, G step) callables of our train step, each running one of `steps` batches."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  # Replicated over the mesh as train.train holds it (a differently placed state recompiles).
  box = [jax.device_put(train.init_state(config, NUM_CAMERAS), parallel.replicated(mesh))]
  step = train.make_train_step(config, NUM_CAMERAS, 10**6, 0, mesh)
  batches = [parallel.shard_batch(b, mesh) for b in _batches(steps, config.camstyle)]

  def runner(f):
    def run(i: int) -> None:
      box[0], m = f(box[0], batches[i % steps])   # the steps donate their state
      jax.block_until_ready((box[0], m))
    return run
  return runner(step.d_step), runner(step.g_step)


def torch_stargan(torch, c, num_cameras: int):
  """StarGAN's G and D (HHL's camera-style variant) at the widths and depths of `c`."""
  nn = torch.nn

  class Res(nn.Module):
    def __init__(self, d):
      super().__init__()
      self.main = nn.Sequential(
          nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.InstanceNorm2d(d, affine=True), nn.ReLU(),
          nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.InstanceNorm2d(d, affine=True))

    def forward(self, x):
      return x + self.main(x)

  d = c.g_conv_dim
  g = [nn.Conv2d(3 + num_cameras, d, 7, 1, 3, bias=False), nn.InstanceNorm2d(d, affine=True),
       nn.ReLU()]
  for _ in range(2):
    g += [nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), nn.InstanceNorm2d(2 * d, affine=True),
          nn.ReLU()]
    d *= 2
  g += [Res(d) for _ in range(c.g_repeat_num)]
  for _ in range(2):
    g += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False),
          nn.InstanceNorm2d(d // 2, affine=True), nn.ReLU()]
    d //= 2
  g += [nn.Conv2d(d, 3, 7, 1, 3, bias=False), nn.Tanh()]

  class G(nn.Module):
    def __init__(self):
      super().__init__()
      self.main = nn.Sequential(*g)

    def forward(self, x, onehot):
      cmap = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
      return self.main(torch.cat([x, cmap], dim=1))

  class D(nn.Module):
    def __init__(self):
      super().__init__()
      layers, d, cin = [], c.d_conv_dim, 3
      for _ in range(c.d_repeat_num):
        layers += [nn.Conv2d(cin, d, 4, 2, 1), nn.LeakyReLU(0.01)]
        cin, d = d, 2 * d
      self.main = nn.Sequential(*layers)
      kh, kw = stargan.discriminator_map_size(c.height, c.width, c.d_repeat_num)
      self.src = nn.Conv2d(cin, 1, 3, 1, 1, bias=False)
      self.cls = nn.Conv2d(cin, num_cameras, (kh, kw), bias=False)

    def forward(self, x):
      h = self.main(x)
      return self.src(h), self.cls(h).flatten(1)

  return G(), D()


def torch_runners(torch, config, steps: int) -> tuple:
  """(D step, G step) of the same WGAN-GP iteration in PyTorch, as callables."""
  c = config.camstyle
  g, d = torch_stargan(torch, c, NUM_CAMERAS)
  g_opt = torch.optim.Adam(g.parameters(), c.g_lr, (c.beta1, c.beta2))
  d_opt = torch.optim.Adam(d.parameters(), c.d_lr, (c.beta1, c.beta2))
  ce = torch.nn.functional.cross_entropy
  eye = torch.eye(NUM_CAMERAS)
  data = []
  for b in _batches(steps, c):
    x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).float() / 127.5 - 1
    data.append((x, torch.from_numpy(b['camid']).long(), torch.from_numpy(b['target']).long()))

  def d_step(i: int) -> None:
    x, org, trg = data[i % steps]
    src_real, cls_real = d(x)
    with torch.no_grad():
      fake = g(x, eye[trg])
    src_fake, _ = d(fake)
    alpha = torch.rand(x.shape[0], 1, 1, 1)
    x_hat = (alpha * x + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(d(x_hat)[0].sum(), x_hat, create_graph=True)
    gp = ((grad.flatten(1).pow(2).sum(1) + 1e-12).sqrt() - 1).pow(2).mean()
    loss = (-src_real.mean() + src_fake.mean() + c.lambda_cls * ce(cls_real, org)
            + c.lambda_gp * gp)
    d_opt.zero_grad()
    loss.backward()
    d_opt.step()

  def g_step(i: int) -> None:
    x, org, trg = data[i % steps]
    fake = g(x, eye[trg])
    src_fake, cls_fake = d(fake)
    rec = g(fake, eye[org])
    loss = (-src_fake.mean() + c.lambda_cls * ce(cls_fake, trg)
            + c.lambda_rec * (x - rec).abs().mean())
    g_opt.zero_grad()
    loss.backward()
    g_opt.step()

  return d_step, g_step


def measure(runners: dict, steps: int) -> dict:
  """Median seconds of each (D, G) runner pair: two warm-up (compiling) steps, then `steps` steps
  of every runner taken in turns."""
  for warm_up in range(2):   # the second round runs on the first one's outputs
    for pair in runners.values():
      for run in pair:
        run(warm_up)
  times = {k: ([], []) for k in runners}
  for i in range(steps):
    for k, pair in runners.items():
      for run, t in zip(pair, times[k]):
        start = time.perf_counter()
        run(i + 2)
        t.append(time.perf_counter() - start)
  return {k: tuple(float(np.median(t)) for t in ts) for k, ts in times.items()}


def _layer_cases(c) -> list[tuple[str, object, tuple]]:
  """(label, module, input shape) of every distinct G and D layer of camstyle config `c`."""
  b, h, w = c.batch_size, c.height, c.width
  cases = []
  dim, cin = c.d_conv_dim, 3
  for i in range(c.d_repeat_num):
    cases.append((f'D conv{i} {h}x{w} {cin}->{dim}', lambda m, d=dim: stargan.DownConv(d, True, m),
                  (b, h, w, cin)))
    h, w, cin, dim = h // 2, w // 2, dim, dim * 2
  cases.append((f'D src 3x3 {h}x{w} {cin}->1',
                lambda m: stargan.Conv(1, (3, 3), ((1, 1), (1, 1)), m), (b, h, w, cin)))
  cases.append((f'D cls {h}x{w} {cin}->{NUM_CAMERAS}',
                lambda m, k=(h, w): stargan.Conv(NUM_CAMERAS, k, ((0, 0), (0, 0)), m),
                (b, h, w, cin)))
  h, w, d = c.height, c.width, c.g_conv_dim
  cases.append((f'G conv_in 7x7 {h}x{w}', lambda m: stargan.Conv(d, (7, 7), ((3, 3),) * 2, m),
                (b, h, w, 3 + NUM_CAMERAS)))
  cases.append((f'G down0 {h}x{w}', lambda m: stargan.DownConv(2 * d, False, m), (b, h, w, d)))
  cases.append((f'G down1 {h // 2}x{w // 2}', lambda m: stargan.DownConv(4 * d, False, m),
                (b, h // 2, w // 2, 2 * d)))
  cases.append((f'G res 3x3 {h // 4}x{w // 4}',
                lambda m: stargan.Conv(4 * d, (3, 3), ((1, 1),) * 2, m),
                (b, h // 4, w // 4, 4 * d)))
  cases.append((f'G up0 {h // 4}x{w // 4}', lambda m: stargan.UpConv(2 * d, m),
                (b, h // 4, w // 4, 4 * d)))
  cases.append((f'G up1 {h // 2}x{w // 2}', lambda m: stargan.UpConv(d, m),
                (b, h // 2, w // 2, 2 * d)))
  cases.append((f'G conv_out 7x7 {h}x{w}', lambda m: stargan.Conv(3, (7, 7), ((3, 3),) * 2, m),
                (b, h, w, d)))
  return cases


def _seconds(f, *args) -> float:
  jax.block_until_ready(f(*args))
  start, n = time.perf_counter(), 0
  while n < 2 or time.perf_counter() - start < 0.5:
    jax.block_until_ready(f(*args))
    n += 1
  return (time.perf_counter() - start) / n


def time_layers(names: list[str]) -> None:
  """Per layer ms, native against matmul: forward + backward, and (D) the gradient penalty's
  second derivative (the parameters' gradient of the input gradient's squared norm)."""
  rng = np.random.default_rng(0)
  for name in names:
    c = bench_config(name, 'native').camstyle
    print(f'{name} {c.height}x{c.width}, batch {c.batch_size}', flush=True)
    for label, make, shape in _layer_cases(c):
      x = jnp.asarray(rng.normal(size=shape), jnp.float32)
      v = make('native').init(jax.random.key(0), x)
      row = []
      for mode in ('native', 'matmul'):
        m = make(mode)
        fwd_bwd = jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))
        row.append(_seconds(fwd_bwd, v, x))
        if label.startswith('D'):
          in_grad = lambda v, x, m=m: jax.grad(lambda x: jnp.sum(m.apply(v, x) ** 2))(x)
          gp = jax.jit(jax.grad(lambda v, x: jnp.sum(in_grad(v, x) ** 2)))
          row.append(_seconds(gp, v, x))
      ms = [t * 1e3 for t in row]   # native (fwd+bwd[, GP]), then matmul (the same)
      half = len(ms) // 2
      text = f'fwd+bwd native {ms[0]:.1f} ms, matmul {ms[half]:.1f} ms'
      if half == 2:
        text += f'; GP 2nd order native {ms[1]:.1f} ms, matmul {ms[3]:.1f} ms'
      print(f'  {label}: {text}', flush=True)


def main(argv=None) -> None:
  """Runs the benchmark and prints iterations/s and the ratios per configuration."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='the 64x32 synthetic config only')
  p.add_argument('--layers', action='store_true', help='time each G / D layer instead')
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 3 quick, 5 full)')
  p.add_argument('--no-torch', action='store_true', help='skip the PyTorch runner')
  p.add_argument('--no-native', action='store_true', help="skip the conv='native' runner")
  p.add_argument('--single-thread', action='store_true',
                 help='one thread for XLA and torch: steadier numbers on a loaded machine')
  args = p.parse_args(argv)
  use_the_runs_allocator()
  if args.single_thread:
    use_one_xla_thread()
  names = ['synthetic'] if args.quick else ['synthetic', 'paper']
  if args.layers:
    time_layers(names)
    return
  torch = None if args.no_torch else optional_torch(args.single_thread)
  steps = args.steps or (3 if args.quick else 5)
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, median of {steps} timed steps, '
        'interleaved' + (', single thread' if args.single_thread else '')
        + (f', torch {torch.__version__}' if torch else ', no torch'))
  for name in names:
    modes = ('auto',) if args.no_native else ('native', 'auto')
    runners = {f'ours {m}': ours_runners(bench_config(name, m), steps) for m in modes}
    c = bench_config(name, 'auto').camstyle
    if torch is not None:
      torch.manual_seed(0)
      runners['torch'] = torch_runners(torch, bench_config(name, 'auto'), steps)
    secs = measure(runners, steps)
    rate = {k: 1.0 / (d + g / c.n_critic) for k, (d, g) in secs.items()}
    print(f'{name} {c.height}x{c.width} batch {c.batch_size} n_critic {c.n_critic}: ' + ', '.join(
        f'{k} D {d * 1e3:.0f} ms G {g * 1e3:.0f} ms {rate[k]:.2f} it/s'
        for k, (d, g) in secs.items()), flush=True)
    if not args.no_native:
      print(f'ratio {rate["ours auto"] / rate["ours native"]:.2f}', flush=True)
    if torch is not None:
      print(f'torch ratio {rate["ours auto"] / rate["torch"]:.2f}', flush=True)


if __name__ == '__main__':
  main()
