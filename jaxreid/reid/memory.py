"""The lookup table V (a row per cluster) and the paper's repelled loss (BUC's exclusive loss).

Pure functions: `loss` uses V as it was before the batch (V is not a learned parameter), `update`
then folds the batch into V sample by sample in batch order, V[y] <- normalise((V[y] + x) / 2).
Rows labelled -1 (padding of a last, short batch) take part in neither.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreid.reid.model import l2_normalize


def zeros(num_classes: int, dim: int) -> jax.Array:
  """A fresh table: zero rows, as BUC re-initialises it after every merge."""
  return jnp.zeros((num_classes, dim), jnp.float32)


def logits(table, embeddings, temperature: float):
  """Similarity to every cluster row, divided by the temperature beta; no gradient into V."""
  return embeddings.astype(jnp.float32) @ jax.lax.stop_gradient(table).T / temperature


def _mean_over_valid(values, labels):
  valid = labels >= 0
  return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def loss(table, embeddings, labels, temperature: float):
  """Mean softmax cross-entropy of `logits` against the cluster labels."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits(table, embeddings, temperature), jnp.maximum(labels, 0))
  return _mean_over_valid(ce, labels)


def accuracy(table, embeddings, labels, temperature: float):
  """Fraction of samples whose most similar table row is their own cluster's."""
  hits = jnp.argmax(logits(table, embeddings, temperature), axis=-1) == labels
  return _mean_over_valid(hits.astype(jnp.float32), labels)


def update(table, embeddings, labels):
  """Folds a batch into V in batch order; repeated labels update sequentially, zero rows -> norm(x).

  Only the batch's own rows are carried through the sequential scan (a [B, D] buffer indexed by
  the first occurrence of each label), so the loop costs O(B * D), not O(B * C * D).
  """
  table = jnp.asarray(table)
  x = jax.lax.stop_gradient(embeddings).astype(table.dtype)
  valid = labels >= 0
  first = jnp.argmax(labels[:, None] == labels[None, :], axis=1)
  rows = table[jnp.maximum(labels, 0)]

  def fold(buf, item):
    slot, xi, ok = item
    row = buf[slot]
    return buf.at[slot].set(jnp.where(ok, l2_normalize((row + xi) / 2), row)), None

  rows, _ = jax.lax.scan(fold, rows, (first, x, valid))
  # Repeated labels all write their label's final row: equal values, so the scatter is exact.
  # Padding rows point past the end and are dropped.
  target = jnp.where(valid, labels, table.shape[0])
  return table.at[target].set(rows[first], mode='drop')
