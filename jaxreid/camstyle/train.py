"""WGAN-GP training of the camera-style StarGAN on unlabeled images (camera ids only).

An iteration (`TrainStep`) is a jitted D update and, every `n_critic`-th iteration, a jitted G
update on the same batch (StarGAN's schedule); both run over the mesh with the batch sharded on
'data' and the state replicated and donated. Everything random is a function of the config seed
and the iteration, so a killed run resumes from its last Orbax checkpoint to the same result.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image
from tqdm import tqdm

from jaxreid import atomic, checkpoint, parallel, records
from jaxreid.camstyle import stargan
from jaxreid.configlib import ConfigError
from jaxreid.data import augment, pipeline

_SEED_TAG = 0x5CA3  # separates the StarGAN's initialisation from the re-ID network's


@flax.struct.dataclass
class GanState:
  """Everything a resumed training needs: both networks, both Adam states, the iteration, the key."""
  g_params: Any
  d_params: Any
  g_opt: Any
  d_opt: Any
  step: jax.Array  # iterations done (= D updates)
  rng: jax.Array  # raw uint32 key; per-step keys are fold_in(rng, step)


# ------------------------------------------------------------------ schedule and config


def check_config(c: ml_collections.ConfigDict, num_cameras: int, num_images: int) -> None:
  """Refuses camstyle settings that cannot train (one line naming the key)."""
  if num_cameras < 2:
    raise ConfigError(f'camstyle needs at least 2 cameras, the training split has {num_cameras}; '
                      'set config.camstyle.enabled=False')
  for key in ('g_conv_dim', 'd_conv_dim', 'batch_size', 'n_critic', 'chunk_size',
              'generate_batch_size', 'sample_images'):
    if c[key] < 1:
      raise ConfigError(f'config.camstyle.{key}={c[key]!r}: expected a positive integer')
  for key in ('lambda_cls', 'lambda_rec', 'lambda_gp', 'lambda_idt'):
    if not c[key] >= 0:
      raise ConfigError(f'config.camstyle.{key}={c[key]!r}: expected a non-negative weight')
  for key in ('g_repeat_num', 'num_epochs', 'decay_epochs'):
    if c[key] < 0:
      raise ConfigError(f'config.camstyle.{key}={c[key]!r}: expected a non-negative integer')
  if c.decay_epochs > c.num_epochs:
    raise ConfigError(f'config.camstyle.decay_epochs={c.decay_epochs}: expected at most '
                      f'config.camstyle.num_epochs={c.num_epochs}')
  if c.load_height < c.height or c.load_width < c.width:
    raise ConfigError(f'config.camstyle.load_height/load_width={c.load_height}x{c.load_width}: '
                      f'expected at least the crop size {c.height}x{c.width}')
  if c.batch_size > num_images:
    raise ConfigError(f'config.camstyle.batch_size={c.batch_size}: expected at most the '
                      f'{num_images} training images')
  if c.fake_format not in ('jpeg', 'png'):
    raise ConfigError(f"config.camstyle.fake_format={c.fake_format!r}: expected 'jpeg' or 'png'")
  try:
    stargan.check_image_size(c.height, c.width, c.d_repeat_num, what='config.camstyle')
    stargan.check_conv_mode(c.conv)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def iterations(c: ml_collections.ConfigDict, num_images: int) -> tuple[int, int, int]:
  """(total iterations, iterations per epoch, iterations of linear decay at the end)."""
  per_epoch = pipeline.steps_per_epoch(num_images, c.batch_size)
  total = c.num_iters if c.num_iters > 0 else c.num_epochs * per_epoch
  decay = round(total * c.decay_epochs / c.num_epochs) if c.num_epochs else 0
  return total, per_epoch, decay


def learning_rate(base_lr: float, step, total: int, decay: int):
  """Constant, then linear to 0 over the last `decay` iterations (step counts from 0)."""
  if decay <= 0:
    return jnp.asarray(base_lr, jnp.float32)
  frac = jnp.clip((total - step) / decay, 0.0, 1.0)
  return (base_lr * frac).astype(jnp.float32)


# ------------------------------------------------------------------ state and step

# The builders below return fresh jitted functions; a second train() or generate() in one process
# recompiles, which the persistent compilation cache (jaxreid.cli_setup) turns into a disk read.


def init_state(config: ml_collections.ConfigDict, num_cameras: int) -> GanState:
  """Fresh networks and Adam states from the config seed (on the default device)."""
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _SEED_TAG)
  return _init_fn(config, num_cameras)(key)


def _init_fn(config, num_cameras):
  """key -> GanState, jitted (one compile instead of one per layer op)."""
  c = config.camstyle
  g, d = stargan.build(c, num_cameras)
  tx = _adam(c)

  def init(key):
    gk, dk, rng = jax.random.split(key, 3)
    x = jnp.zeros((1, c.height, c.width, 3), jnp.float32)
    g_params = g.init(gk, x, jnp.zeros((1, num_cameras), jnp.float32))['params']
    d_params = d.init(dk, x)['params']
    return GanState(g_params=g_params, d_params=d_params, g_opt=tx.init(g_params),
                    d_opt=tx.init(d_params), step=jnp.zeros((), jnp.int32), rng=rng)

  return jax.jit(init)


def _adam(c) -> optax.GradientTransformation:
  # The learning rate is applied in the step (it depends on the iteration, shared by G and D).
  return optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=1e-8)


def to_model_input(images_uint8: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 in [-1, 1] (HHL's Normalize(0.5, 0.5))."""
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] -> uint8 RGB."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """One StarGAN iteration: a D update, then a G update on the same batch every n_critic-th.

  Two jitted functions rather than one with a lax.cond: XLA:CPU runs convolutions inside a
  conditional on a slow path (about 10x here), and the host knows the iteration anyway.
  """
  d_step: Callable[[GanState, dict], tuple[GanState, dict]]
  g_step: Callable[[GanState, dict], tuple[GanState, dict]]
  n_critic: int

  def __call__(self, state: GanState, batch: dict, iteration: int) -> tuple[GanState, dict]:
    """Runs iteration `iteration` (0-based; = state.step); metrics hold G's only after a G update."""
    state, metrics = self.d_step(state, batch)
    if (iteration + 1) % self.n_critic == 0:
      state, g_metrics = self.g_step(state, batch)
      metrics = {**metrics, **g_metrics}
    return state, metrics


def make_train_step(config: ml_collections.ConfigDict, num_cameras: int, total_iters: int,
                    decay_iters: int, mesh) -> TrainStep:
  """The StarGAN iteration over `mesh`: batch sharded on 'data', state replicated and donated."""
  c = config.camstyle
  g, d = stargan.build(c, num_cameras)
  d_first_order = d.clone(second_order=False)   # same parameters; see stargan's conv modes
  tx = _adam(c)

  def d_loss_fn(d_params, g_params, x, c_org, c_trg, key):
    src_real, cls_real = d.apply({'params': d_params}, x)
    x_fake = jax.lax.stop_gradient(g.apply({'params': g_params}, x, jax.nn.one_hot(c_trg, num_cameras)))
    src_fake, _ = d.apply({'params': d_params}, x_fake)
    alpha = jax.random.uniform(key, (x.shape[0], 1, 1, 1))
    x_hat = alpha * x + (1.0 - alpha) * x_fake
    grads = jax.grad(lambda xh: d.apply({'params': d_params}, xh)[0].sum())(x_hat)
    # eps keeps the gradient of the norm finite where the critic's input gradient vanishes.
    norm = jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3)) + 1e-12)
    gp = jnp.mean((norm - 1.0) ** 2)
    loss_real, loss_fake, loss_cls = -src_real.mean(), src_fake.mean(), _ce(cls_real, c_org)
    loss = loss_real + loss_fake + c.lambda_cls * loss_cls + c.lambda_gp * gp
    acc = jnp.mean(jnp.argmax(cls_real, -1) == c_org)
    return loss, {'d_loss': loss, 'd_real': loss_real, 'd_fake': loss_fake, 'd_cls': loss_cls,
                  'd_gp': gp, 'd_cls_acc': acc}

  def g_loss_fn(g_params, d_params, x, c_org, c_trg):
    x_fake = g.apply({'params': g_params}, x, jax.nn.one_hot(c_trg, num_cameras))
    src_fake, cls_fake = d_first_order.apply({'params': d_params}, x_fake)
    x_rec = g.apply({'params': g_params}, x_fake, jax.nn.one_hot(c_org, num_cameras))
    loss_fake, loss_cls = -src_fake.mean(), _ce(cls_fake, c_trg)
    loss_rec = jnp.mean(jnp.abs(x - x_rec))
    loss = loss_fake + c.lambda_rec * loss_rec + c.lambda_cls * loss_cls
    acc = jnp.mean(jnp.argmax(cls_fake, -1) == c_trg)
    metrics = {'g_fake': loss_fake, 'g_rec': loss_rec, 'g_cls': loss_cls, 'g_cls_acc': acc}
    if c.lambda_idt > 0:   # a Python branch: the paper's loss (0) compiles without the extra G pass
      # Identity mapping (CycleGAN / CamStyle; not in StarGAN): asked for its own camera, G
      # returns the image. It penalises fakes that replace the person by a camera prototype.
      x_idt = g.apply({'params': g_params}, x, jax.nn.one_hot(c_org, num_cameras))
      metrics['g_idt'] = jnp.mean(jnp.abs(x - x_idt))
      loss = loss + c.lambda_idt * metrics['g_idt']
    return loss, {'g_loss': loss, **metrics}

  def apply_adam(params, opt, grads, lr):
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates)), opt

  def d_step(state: GanState, batch: dict) -> tuple[GanState, dict]:
    x = to_model_input(batch['image'])
    key = jax.random.fold_in(state.rng, state.step)
    lr = learning_rate(c.d_lr, state.step, total_iters, decay_iters)
    grads, metrics = jax.grad(d_loss_fn, has_aux=True)(
        state.d_params, state.g_params, x, batch['camid'], batch['target'], key)
    d_params, d_opt = apply_adam(state.d_params, state.d_opt, grads, lr)
    return state.replace(d_params=d_params, d_opt=d_opt, step=state.step + 1), {**metrics, 'lr': lr}

  def g_step(state: GanState, batch: dict) -> tuple[GanState, dict]:
    # After d_step: state.step - 1 is this iteration, and G sees the D just updated (StarGAN).
    x = to_model_input(batch['image'])
    lr = learning_rate(c.g_lr, state.step - 1, total_iters, decay_iters)
    grads, metrics = jax.grad(g_loss_fn, has_aux=True)(
        state.g_params, state.d_params, x, batch['camid'], batch['target'])
    g_params, g_opt = apply_adam(state.g_params, state.g_opt, grads, lr)
    return state.replace(g_params=g_params, g_opt=g_opt), metrics

  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  jit = lambda f: jax.jit(f, in_shardings=(repl, data), out_shardings=(repl, repl),
                          donate_argnums=0)
  return TrainStep(jit(d_step), jit(g_step), c.n_critic)


def make_translate(config: ml_collections.ConfigDict, num_cameras: int, mesh):
  """Jitted (g_params, uint8 images, target cameras) -> uint8 fakes, batch sharded on 'data'."""
  g, _ = stargan.build(config.camstyle, num_cameras)

  def translate(g_params, images, targets):
    out = g.apply({'params': g_params}, to_model_input(images), jax.nn.one_hot(targets, num_cameras))
    return to_uint8(out)

  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(translate, in_shardings=(repl, data, data), out_shardings=data)


# ------------------------------------------------------------------ samples


def sample_indices(camids: np.ndarray, count: int) -> np.ndarray:
  """`count` images spread over the cameras (round-robin) and, within a camera, evenly over its
  images (so mostly different people)."""
  per_cam = [np.flatnonzero(camids == k) for k in np.unique(camids)]
  rounds = -(-min(count, len(camids)) // len(per_cam))
  picks = [ids[np.unique(np.linspace(0, len(ids) - 1, min(rounds, len(ids))).round().astype(int))]
           for ids in per_cam]
  out = [p[r] for r in range(rounds) for p in picks if r < len(p)]
  return np.asarray(out[:count], np.int64)


def translate_all(translate, g_params, images: np.ndarray, num_cameras: int, mesh) -> np.ndarray:
  """(n, L, H, W, 3) uint8: every image under every camera (padded to the mesh, host numpy)."""
  n = len(images)
  src = np.repeat(images, num_cameras, axis=0)
  tgt = np.tile(np.arange(num_cameras, dtype=np.int32), n)
  pad = (-len(src)) % mesh.devices.size
  if pad:
    src = np.concatenate([src, np.repeat(src[:1], pad, 0)])
    tgt = np.concatenate([tgt, np.zeros(pad, np.int32)])
  rows = parallel.host_slice(len(src), mesh)  # each process feeds its own rows
  out = translate(g_params, *parallel.shard_batch((src[rows], tgt[rows]), mesh))
  return parallel.to_host(out)[:n * num_cameras].reshape(n, num_cameras, *images.shape[1:])


def sample_grid(reals: np.ndarray, fakes: np.ndarray, gap: int = 2) -> np.ndarray:
  """Rows: each real image, then its fakes under cameras 1..L; white gaps, a double one after the
  real column."""
  n, l, h, w, _ = fakes.shape
  x0 = w + 2 * gap  # where the first fake starts
  grid = np.full((n * (h + gap) - gap, x0 + l * (w + gap) - gap, 3), 255, np.uint8)
  for r in range(n):
    y = r * (h + gap)
    grid[y:y + h, :w] = reals[r]
    for k in range(l):
      x = x0 + k * (w + gap)
      grid[y:y + h, x:x + w] = fakes[r, k]
  return grid


def save_png(path: pathlib.Path, image: np.ndarray) -> None:
  """Writes a PNG atomically (temp file + rename)."""
  with atomic.writing(path) as tmp:
    Image.fromarray(image).save(tmp, format='PNG')


# ------------------------------------------------------------------ the loop


def _check_finite(metrics: dict, step: int) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise FloatingPointError(f'camstyle training diverged at iteration {step}: non-finite '
                             f'{", ".join(bad)}; lower config.camstyle.g_lr / d_lr')


def restore_or_init(config, num_cameras: int, ckpt: checkpoint.Checkpointer, mesh) -> GanState:
  """The last checkpointed state in `ckpt`, or a fresh one; replicated over `mesh`."""
  if ckpt.latest_index() is None:
    return parallel.replicate(init_state(config, num_cameras), mesh)
  abstract = jax.eval_shape(lambda: init_state(config, num_cameras))
  repl = parallel.replicated(mesh)
  return ckpt.restore(abstract, sharding_fn=lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), tree))


def train(config: ml_collections.ConfigDict, split, workdir, mesh,
          stop_after: int | None = None) -> dict:
  """Trains (or resumes) the StarGAN on `split`'s images and camera ids; returns a summary.

  Writes checkpoints under WORKDIR/checkpoints, losses to WORKDIR/metrics.jsonl and sample grids
  to WORKDIR/samples. `stop_after` stops (with a checkpoint) after that many more iterations; a
  later call continues.
  """
  c = config.camstyle
  workdir = pathlib.Path(workdir)
  num_cameras, camids = int(split.num_cameras), np.asarray(split.camids, np.int32)
  check_config(c, num_cameras, len(camids))
  parallel.check_batch_size(c.batch_size, mesh, 'config.camstyle.batch_size')
  total, per_epoch, decay = iterations(c, len(camids))
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', max_to_keep=config.checkpoint.max_to_keep)
  state = restore_or_init(config, num_cameras, ckpt, mesh)
  start = int(state.step)
  stop = total if stop_after is None else min(total, start + stop_after)
  step_fn = make_train_step(config, num_cameras, total, decay, mesh)
  translate = make_translate(config, num_cameras, mesh)
  show = sample_indices(camids, c.sample_images)
  show_images = np.stack([augment.resize(split.image(int(i)), c.height, c.width) for i in show])
  writer = records.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  last_g, host = {}, {}
  bar = tqdm(total=total, initial=start, desc='camstyle', unit='it',
             disable=not sys.stderr.isatty(), dynamic_ncols=True)
  try:
    for it, batch in pipeline.camstyle_batches(
        split.image, camids, num_cameras, c, seed=config.seed, start=start, stop=stop, mesh=mesh,
        prefetch=config.data.prefetch, threads=config.data.decode_threads):
      state, metrics = step_fn(state, batch, it)
      done = it + 1
      # Fetching metrics waits for the device, so only now and then (G's are those of the last
      # G update seen; with log_every a multiple of n_critic, of this very step).
      if done % c.log_every == 0 or done == stop:
        host = {k: float(v) for k, v in parallel.to_host(metrics).items()}
        last_g = {k: v for k, v in host.items() if k.startswith('g_')} or last_g
        host = {k: v for k, v in host.items() if not k.startswith('g_')}
        _check_finite({**host, **last_g}, done)
        writer.write(done, {**host, **last_g}, prefix='camstyle/')
        bar.set_postfix({k: f'{v:.3g}' for k, v in {**host, **last_g}.items()
                         if k in ('d_loss', 'd_gp', 'd_cls_acc', 'g_rec', 'g_cls_acc')})
      bar.update(1)
      if done % c.checkpoint_every == 0 or done == stop:
        ckpt.save(done, state, {'step': done, 'total_iters': total})
      if done % c.sample_every == 0 or done == total:
        # Every process joins the (collective) translation; one writes the picture.
        fakes = translate_all(translate, state.g_params, show_images, num_cameras, mesh)
        if jax.process_index() == 0:
          save_png(workdir / 'samples' / f'step_{done:07d}.png', sample_grid(show_images, fakes))
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return {'iters': int(state.step), 'total_iters': total, 'iters_per_epoch': per_epoch,
          **host, **last_g}


def load_generator(config: ml_collections.ConfigDict, num_cameras: int, workdir, mesh) -> Any:
  """The trained generator's params from the last checkpoint under WORKDIR/checkpoints."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=config.checkpoint.max_to_keep)
  try:
    if ckpt.latest_index() is None:
      raise FileNotFoundError(f'{directory}: no StarGAN checkpoint; train the camstyle stage first')
    return restore_or_init(config, num_cameras, ckpt, mesh).g_params
  finally:
    ckpt.close()
