"""The lookup table and repelled loss against plain sequential / closed-form references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreid.reid import memory


def sequential_update(table, x, labels):
  """BUC's loop: for each sample in batch order, V[y] <- normalise((V[y] + x) / 2)."""
  t = np.array(table, np.float64)
  for xi, y in zip(np.asarray(x, np.float64), labels):
    if y < 0:
      continue
    v = (t[y] + xi) / 2
    t[y] = v / max(np.linalg.norm(v), 1e-12)
  return t


def random_case(seed, num_classes=6, batch=32, dim=8, zero_rows=3):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(num_classes, dim))
  table /= np.linalg.norm(table, axis=1, keepdims=True)
  table[rng.choice(num_classes, zero_rows, replace=False)] = 0.0
  x = rng.normal(size=(batch, dim)) * rng.uniform(0.5, 2.0, size=(batch, 1))
  labels = rng.integers(0, num_classes, batch)
  return table.astype(np.float32), x.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize('seed', range(6))
def test_update_equals_sequential_reference_with_repeated_labels_and_zero_rows(seed):
  table, x, labels = random_case(seed)
  assert len(set(labels.tolist())) < len(labels) // 3   # many repeats
  got = jax.jit(memory.update)(table, x, labels)
  np.testing.assert_allclose(np.asarray(got), sequential_update(table, x, labels),
                             rtol=1e-5, atol=1e-6)


def test_update_of_zero_row_is_normalised_sample_and_other_rows_untouched():
  table, x, _ = random_case(1, num_classes=5, batch=1)
  table[2] = 0.0
  got = np.asarray(memory.update(table, x, np.array([2], np.int32)))
  np.testing.assert_allclose(got[2], x[0] / np.linalg.norm(x[0]), rtol=1e-6)
  np.testing.assert_array_equal(np.delete(got, 2, axis=0), np.delete(table, 2, axis=0))


def test_padding_rows_labelled_minus_one_change_nothing():
  table, x, labels = random_case(3)
  labels[::3] = -1
  got = memory.update(table, x, labels)
  np.testing.assert_allclose(np.asarray(got), sequential_update(table, x, labels),
                             rtol=1e-5, atol=1e-6)
  keep = labels >= 0
  np.testing.assert_allclose(float(memory.loss(table, x, labels, 0.1)),
                             float(memory.loss(table, x[keep], labels[keep], 0.1)), rtol=1e-6)


def test_loss_and_gradient_match_closed_form_with_table_as_constant():
  table, x, labels = random_case(4, zero_rows=0)
  t = 0.1

  def ref(xv):
    z = xv @ table.T / t
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(len(table))[labels]
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    return loss, (p - onehot) @ table / (t * len(labels))

  want_loss, want_grad = ref(x.astype(np.float64))
  loss, (g_table, g_x) = jax.value_and_grad(memory.loss, argnums=(0, 1))(
      jnp.asarray(table), jnp.asarray(x), labels, t)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_x), want_grad, rtol=1e-4, atol=1e-6)
  # V is a lookup table, not a parameter: no gradient reaches it.
  assert not np.any(np.asarray(g_table))


def test_zero_table_gives_uniform_loss_log_c():
  _, x, labels = random_case(5, num_classes=7)
  assert float(memory.loss(memory.zeros(7, 8), x, labels, 0.1)) == pytest.approx(np.log(7),
                                                                                  rel=1e-6)
