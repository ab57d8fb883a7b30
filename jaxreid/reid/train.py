"""Training the re-ID network with the repelled loss: state, optimiser, the jitted step, an epoch.

One `jax.jit` over the mesh: batch sharded on 'data', state replicated and donated, so BatchNorm
statistics and the loss are those of the global batch whatever the device count.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Iterable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh

from jaxreid import parallel
from jaxreid.data import augment
from jaxreid.reid import memory, model as model_lib, pretrained


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the last finite metrics."""


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; replicated over the mesh."""
  params: Any
  batch_stats: Any
  opt_state: Any
  table: jax.Array      # lookup table V [num_classes, embedding_dim]; not a learned parameter
  step: jax.Array       # train steps taken so far, over all merge steps (dropout key, logging)
  rng: jax.Array        # uint32 key data (checkpoint-friendly); step k uses fold_in(key, k)

  @property
  def variables(self) -> dict:
    """The {'params', 'batch_stats'} a ReidNet applies with."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def scale_backbone(backbone_lr_mult: float = 1.0, frozen: tuple[str, ...] = ()
                   ) -> optax.GradientTransformation:
  """Scales the updates of the backbone's modules by `backbone_lr_mult` and sets those of the
  modules named in `frozen` to zero (no update at all, weight decay included)."""
  def scale(updates, params):
    del params
    def backbone(tree):
      return {name: jax.tree.map(jnp.zeros_like if name in frozen else
                                 (lambda u: u * backbone_lr_mult), sub)
              for name, sub in tree.items()}
    return {k: (backbone(v) if k == 'backbone' else v) for k, v in updates.items()}
  return optax.stateless(scale)


def _sgd(learning_rate, momentum, weight_decay, backbone_lr_mult, nesterov, frozen=()):
  """torch.optim.SGD: decay added to the gradient before (Nesterov) momentum, lr applied last.

  Backbone modules named in `frozen` get no update at all (no weight decay either).
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.trace(decay=momentum, nesterov=nesterov),
      scale_backbone(backbone_lr_mult, frozen),
      optax.scale_by_learning_rate(learning_rate))


def make_optimizer(train_config: ml_collections.ConfigDict, lr: float | None = None,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """SGD of BUC; the learning rate lives in the optimiser state (see `with_learning_rate`).

  `frozen`: backbone modules left as initialised (`model_lib.frozen_modules`).
  """
  lr = train_config.step0_lr if lr is None else lr
  return optax.inject_hyperparams(_sgd, static_args=('nesterov', 'frozen'),
                                  hyperparam_dtype=jnp.float32)(
      learning_rate=lr, momentum=train_config.momentum, weight_decay=train_config.weight_decay,
      backbone_lr_mult=train_config.backbone_lr_mult, nesterov=train_config.nesterov,
      frozen=tuple(frozen))


def learning_rate(train_config: ml_collections.ConfigDict, merge_step: int, epoch: int) -> float:
  """Step 0: step0_lr, x lr_decay_factor from epoch step0_lr_decay_epoch on; later: later_lr."""
  if merge_step > 0:
    return float(train_config.later_lr)
  decayed = epoch >= train_config.step0_lr_decay_epoch
  return float(train_config.step0_lr * (train_config.lr_decay_factor if decayed else 1.0))


def epochs_for(train_config: ml_collections.ConfigDict, merge_step: int) -> int:
  """Epochs trained in a merge step (20 in step 0, 2 later, by default)."""
  return int(train_config.step0_epochs if merge_step == 0 else train_config.later_epochs)


def _replicated_like(state: TrainState):
  return state.step.sharding


def with_learning_rate(state: TrainState, lr: float) -> TrainState:
  """`state` whose optimiser uses learning rate `lr` (backbone: lr * backbone_lr_mult)."""
  hp = dict(state.opt_state.hyperparams)
  hp['learning_rate'] = jax.device_put(np.float32(lr), _replicated_like(state))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Randomly initialised ReidNet variables, with the ImageNet backbone if the config names one."""
  net = model_lib.build_model(config.model)
  variables = model_lib.init_variables(net, rng, config.data.height, config.data.width)
  if config.model.init_checkpoint:
    variables = pretrained.load_backbone(config.model.init_checkpoint, variables,
                                         config.model.arch)
  return variables


def create_train_state(config: ml_collections.ConfigDict, num_classes: int, rng: jax.Array,
                       mesh: Mesh) -> TrainState:
  """A fresh state on the mesh: initialised network, zero table of `num_classes` rows, step-0 lr."""
  _check_num_classes(num_classes)
  variables = init_variables(config, jax.random.fold_in(rng, 0))
  tx = make_optimizer(config.train, frozen=model_lib.frozen_modules(config.model))
  state = TrainState(
      params=variables['params'], batch_stats=variables['batch_stats'],
      opt_state=tx.init(variables['params']),
      table=memory.zeros(num_classes, config.model.embedding_dim),
      step=jnp.zeros((), jnp.int32), rng=model_lib.key_data(jax.random.fold_in(rng, 1)))
  return parallel.replicate(state, mesh)


def _check_num_classes(num_classes: int) -> None:
  if int(num_classes) < 1:
    raise ValueError(f'num_classes={num_classes!r}: expected at least one cluster')


def reset_for_new_labels(state: TrainState, num_classes: int, config: ml_collections.ConfigDict,
                         lr: float) -> TrainState:
  """After a merge: zero table of `num_classes` rows, fresh optimiser at `lr`; weights kept."""
  _check_num_classes(num_classes)
  sharding = _replicated_like(state)
  tx = make_optimizer(config.train, lr, frozen=model_lib.frozen_modules(config.model))
  fresh = jax.jit(lambda p: (tx.init(p), memory.zeros(num_classes, config.model.embedding_dim)),
                  out_shardings=sharding)
  opt_state, table = fresh(state.params)
  return state.replace(opt_state=opt_state, table=table)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, conv: Any = None
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
  """`train_step(state, batch) -> (state, metrics)`, jitted over `mesh`, donating the state.

  `batch`: {'image': uint8 [B, H, W, 3], 'label': int [B], ...} sharded on 'data'; images are
  normalised on the device. Metrics: loss, accuracy (argmax of the table logits), lr.
  """
  net = model_lib.build_model(config.model, **({'conv': conv} if conv is not None else {}))
  tx = make_optimizer(config.train, frozen=model_lib.frozen_modules(config.model))
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature = float(config.memory.temperature)
  if temperature <= 0:
    raise ValueError(f'config.memory.temperature={temperature!r}: expected a positive number')

  def step(state: TrainState, batch):
    images = augment.normalize(batch['image'], mean, std)
    labels = batch['label'].astype(jnp.int32)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      out, updated = net.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                               train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      emb = out['embedding']
      return memory.loss(state.table, emb, labels, temperature), (emb, updated['batch_stats'])

    (loss, (emb, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = memory.accuracy(state.table, emb, labels, temperature)
    new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                              table=memory.update(state.table, emb, labels), step=state.step + 1)
    metrics = {'loss': loss, 'accuracy': accuracy,
               'lr': state.opt_state.hyperparams['learning_rate']}
    return new_state, metrics

  rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  jitted = jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

  def train_step(state: TrainState, batch):
    parallel.check_batch_size(int(batch['label'].shape[0]), mesh, 'config.train.batch_size')
    return jitted(state, batch)

  return train_step


def _fmt(metrics: Mapping[str, float]) -> str:
  return ', '.join(f'{k}={v:.6g}' for k, v in metrics.items())


def train_epoch(train_step: Callable, state: TrainState, batches: Iterable[Mapping[str, Any]],
                *, lr: float, num_steps: int | None = None, desc: str = 'train',
                log_every: int = 50, log_fn: Callable[[int, dict], None] | None = None
                ) -> tuple[TrainState, dict]:
  """Runs `train_step` over `batches` at learning rate `lr`; returns the state and mean metrics.

  Metrics stay on the device and are fetched every `log_every` steps and at the end of the epoch
  (one wait for the device each time, as big_vision does); a non-finite loss then raises
  NonFiniteLossError naming its step and the last finite metrics. `log_fn(step, metrics)` is
  called every `log_every` steps.
  """
  state = with_learning_rate(state, lr)
  step = int(jax.device_get(state.step))
  sums: dict[str, float] = {}
  count = 0
  last_good: tuple[int, dict] | None = None
  pending: list[tuple[int, dict]] = []   # (step, device metrics) not fetched yet

  def settle() -> dict | None:
    """Fetches the pending steps' metrics, checks them in step order and adds them up."""
    nonlocal count, last_good
    fetched = jax.device_get([m for _, m in pending])
    m = None
    for (k, _), m in zip(pending, fetched):
      m = {name: float(v) for name, v in m.items()}
      if not math.isfinite(m['loss']):
        where = (f'last finite metrics at step {last_good[0]}: {_fmt(last_good[1])}'
                 if last_good else 'no finite loss before it')
        raise NonFiniteLossError(f'non-finite loss {m["loss"]} at train step {k} ({desc}); {where}')
      last_good = (k, m)
      for name, v in m.items():
        sums[name] = sums.get(name, 0.0) + v   # float64 on the host, in step order
      count += 1
      if log_fn is not None and log_every and (k + 1) % log_every == 0:
        log_fn(k, m)
    pending.clear()
    return m

  with tqdm.tqdm(batches, total=num_steps, desc=desc, leave=False,
                 disable=not sys.stderr.isatty()) as bar:
    for batch in bar:
      state, metrics = train_step(state, batch)
      pending.append((step, metrics))
      step += 1
      if log_every and step % log_every == 0:
        m = settle()
        bar.set_postfix(loss=f'{m["loss"]:.4f}', acc=f'{m["accuracy"]:.3f}', refresh=False)
    settle()
  return state, {name: v / count for name, v in sums.items()} if count else {}
