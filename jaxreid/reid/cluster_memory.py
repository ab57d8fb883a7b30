"""The density head's network, cluster memory, contrastive loss and jitted train step.

Cluster Contrast (Dai et al., ACCV 2022): the feature is L2-normalise(BatchNorm(pooled trunk)); the
memory holds one L2-normalised row per cluster, initialised with the cluster means at every
re-clustering; the loss is the softmax cross-entropy of feature @ memory^T / temperature; after the
step every sample folds into its cluster's row in batch order, row <- normalise(m row + (1 - m) x).

One `jax.jit` over the mesh (batch sharded on 'data', state replicated and donated): BatchNorm
statistics, the loss and the memory update are those of the global batch on any device count.
The state is `reid.train.TrainState`, its `table` the cluster memory.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxreid import parallel
from jaxreid.data import augment
from jaxreid.reid import efficientnet, model as model_lib, resnet
from jaxreid.reid import train as reid_train
from jaxreid.reid.train import TrainState


class DensityNet(nn.Module):
  """Backbone + BatchNorm on the pooled feature; `feature` = `embedding` = its L2-normalisation.

  Training an EfficientNet-Lite trunk with drop_connect > 0 needs a 'dropout' key.
  """
  arch: str = 'resnet50'
  last_stride: int = 2
  dtype: Any = jnp.float32
  conv: Any = nn.Conv
  pooling: str = 'avg'
  gem_p: float = 3.0
  drop_connect: float = 0.2     # EfficientNet-Lite only: per-sample residual-branch dropout
  frozen_stages: int = 0        # EfficientNet-Lite only: leading stages kept as initialised

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.arch in efficientnet.ARCHS:
      trunk = efficientnet.EfficientNetLite(self.arch, self.drop_connect, self.dtype, self.conv,
                                            self.frozen_stages, self.pooling, self.gem_p,
                                            name='backbone')
    else:
      trunk = resnet.ResNet(self.arch, self.last_stride, self.dtype, self.conv, self.pooling,
                            self.gem_p, name='backbone')
    pooled = trunk(images, train)
    # The reference freezes the BatchNorm's shift at 0: no bias at all.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_bias=False,
                     dtype=self.dtype, use_fast_variance=False, name='feat_bn')(pooled)
    f = model_lib.l2_normalize(x.astype(jnp.float32))
    return {'feature': f, 'embedding': f}


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose `model` builds the density head (what extraction and export read)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.head = 'bn'
  out.model.pooling = config.density.pooling
  out.model.gem_p = float(config.density.gem_p)
  return out


def _adam(learning_rate, weight_decay, frozen=()):
  """torch.optim.Adam with weight_decay: L2 added to the gradient before the moments.

  Backbone modules named in `frozen` get no update at all (no weight decay either).
  """
  parts = [optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
           optax.scale_by_learning_rate(learning_rate)]
  # Only when something is frozen: the state of unfrozen runs (and their checkpoints) is unchanged.
  if frozen:
    parts.append(reid_train.scale_backbone(1.0, frozen))
  return optax.chain(*parts)


def make_optimizer(density_config: ml_collections.ConfigDict, lr: float | None = None,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Adam; the learning rate lives in the optimiser state (`reid.train.with_learning_rate`).

  `frozen`: backbone modules left as initialised (`model_lib.frozen_modules`).
  """
  return optax.inject_hyperparams(_adam, static_args=('frozen',), hyperparam_dtype=jnp.float32)(
      learning_rate=density_config.lr if lr is None else lr,
      weight_decay=density_config.weight_decay, frozen=tuple(frozen))


def learning_rate(density_config: ml_collections.ConfigDict, epoch: int) -> float:
  """lr x lr_decay_factor ^ (epoch // lr_step_epochs) (a step decay per epoch)."""
  return float(density_config.lr *
               density_config.lr_decay_factor ** (epoch // density_config.lr_step_epochs))


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: Mesh
                       ) -> TrainState:
  """A fresh state on the mesh: initialised network (ImageNet trunk if named), a 1-row memory."""
  cfg = model_config(config)
  variables = reid_train.init_variables(cfg, jax.random.fold_in(rng, 0))
  tx = make_optimizer(config.density, frozen=model_lib.frozen_modules(cfg.model))
  dim = jax.eval_shape(lambda v: model_lib.build_model(cfg.model).apply(
      v, jnp.zeros((1, config.data.height, config.data.width, 3))), variables)['feature'].shape[-1]
  state = TrainState(
      params=variables['params'], batch_stats=variables['batch_stats'],
      opt_state=tx.init(variables['params']), table=jnp.zeros((1, dim), jnp.float32),
      step=jnp.zeros((), jnp.int32), rng=model_lib.key_data(jax.random.fold_in(rng, 1)))
  return parallel.replicate(state, mesh)


def memory_rows(num_clusters: int) -> int:
  """Rows the memory is padded to: the next power of two (at least 64), so that the jitted step
  compiles once per bucket, not once per epoch's cluster count."""
  return max(64, 1 << (int(num_clusters) - 1).bit_length())


def with_memory(state: TrainState, centers: np.ndarray) -> TrainState:
  """`state` with its memory replaced by `centers` [C, d], zero-padded to `memory_rows(C)` rows
  (zero rows are no cluster: every real row is unit length)."""
  centers = np.asarray(centers, np.float32)
  table = np.zeros((memory_rows(len(centers)), centers.shape[1]), np.float32)
  table[:len(centers)] = centers
  return state.replace(table=jax.device_put(table, state.step.sharding))


def loss(memory, features, labels, temperature: float):
  """Mean cross-entropy of features @ memory^T / temperature over the memory's non-zero rows;
  samples labelled -1 take no part."""
  memory, labels = jax.lax.stop_gradient(jnp.asarray(memory)), jnp.asarray(labels)
  logits = features.astype(jnp.float32) @ memory.T / temperature
  logits = jnp.where(jnp.any(memory != 0, axis=1)[None], logits, -jnp.inf)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  valid = labels >= 0
  hits = (jnp.argmax(logits, -1) == labels) & valid
  count = jnp.maximum(jnp.sum(valid), 1)
  return jnp.sum(jnp.where(valid, ce, 0.0)) / count, jnp.sum(hits) / count


def update(memory, features, labels, momentum: float):
  """Folds a batch into the memory in batch order: row <- normalise(m row + (1 - m) x).

  Only the batch's own rows are carried through the scan ([B, d], indexed by each label's first
  occurrence), so the sequential part costs O(B d) whatever the number of clusters.
  """
  memory, labels = jnp.asarray(memory), jnp.asarray(labels)
  x = jax.lax.stop_gradient(features).astype(memory.dtype)
  valid = labels >= 0
  first = jnp.argmax(labels[:, None] == labels[None, :], axis=1)
  rows = memory[jnp.maximum(labels, 0)]

  def fold(buf, item):
    slot, xi, ok = item
    row = buf[slot]
    new = model_lib.l2_normalize(momentum * row + (1.0 - momentum) * xi)
    return buf.at[slot].set(jnp.where(ok, new, row)), None

  rows, _ = jax.lax.scan(fold, rows, (first, x, valid))
  target = jnp.where(valid, labels, memory.shape[0])
  return memory.at[target].set(rows[first], mode='drop')


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, conv: Any = None
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
  """`train_step(state, batch) -> (state, metrics)`, jitted over `mesh`, donating the state.

  `batch`: {'image': uint8 [B, H, W, 3], 'label': int [B]} sharded on 'data'.
  Metrics: loss, accuracy (nearest memory row is the own cluster's), lr.
  """
  cfg = model_config(config)
  net = model_lib.build_model(cfg.model, **({'conv': conv} if conv is not None else {}))
  tx = make_optimizer(config.density, frozen=model_lib.frozen_modules(cfg.model))
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature = float(config.density.temperature)
  momentum = float(config.density.memory_momentum)

  def step(state: TrainState, batch):
    images = augment.normalize(batch['image'], mean, std)
    labels = batch['label'].astype(jnp.int32)
    # EfficientNet-Lite's drop connect; the ResNets draw nothing from it.
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      out, updated = net.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                               train=True, rngs={'dropout': dropout_key},
                               mutable=['batch_stats'])
      f = out['embedding']
      value, acc = loss(state.table, f, labels, temperature)
      return value, (f, acc, updated['batch_stats'])

    (value, (f, acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                              table=update(state.table, f, labels, momentum),
                              step=state.step + 1)
    return new_state, {'loss': value, 'accuracy': acc,
                       'lr': state.opt_state.hyperparams['learning_rate']}

  rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  jitted = jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

  def train_step(state: TrainState, batch):
    parallel.check_batch_size(int(batch['label'].shape[0]), mesh, 'config.density.batch_size')
    return jitted(state, batch)

  return train_step


def pk_rows(labels: np.ndarray, *, instances: int, batch_size: int, num_steps: int, seed: int,
            epoch: int) -> np.ndarray:
  """int64 [num_steps * batch_size]: real-image rows in P x K batches (P = batch / K clusters of K
  images each). Clusters are visited in a shuffled order, again and again; a cluster gives K
  distinct images, drawn with replacement only when it has fewer than K. Outliers (-1) never."""
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed % (1 << 64), 7, epoch])
  members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
  members = [m for m in members if len(m)]
  total = num_steps * batch_size
  out = []
  while sum(len(o) for o in out) < total:
    for c in rng.permutation(len(members)):
      m = members[c]
      out.append(rng.choice(m, instances, replace=len(m) < instances))
  return np.concatenate(out)[:total].astype(np.int64)
