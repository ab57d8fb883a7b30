"""Support features kept on the device through a merge: the labels of the host path, bit for bit."""

import jax
import numpy as np
import pytest

from jaxreid import parallel
from jaxreid.clustering import distance, merge, merge_clusters, merge_step, support_topk
from jaxreid.support_sets import support_array

N, L, DIM = 40, 3, 16


def _problem(seed=0):
  """Gaussian support features (not on a grid: float32 rounding is in play) and labels with gaps."""
  rng = np.random.default_rng(seed)
  support = rng.standard_normal((N, L, DIM)).astype(np.float32)
  labels = rng.integers(0, 3 * N, N)
  return support, labels


def _on_device(x, mesh):
  return None if x is None else jax.device_put(x, parallel.replicated(mesh))


@pytest.mark.parametrize('with_fakes', [True, False])
@pytest.mark.parametrize('constraint', [True, False])
def test_device_features_give_the_labels_of_the_host_path(with_fakes, constraint):
  support, labels = _problem()
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  reals, fakes = support[:, 0], (support[:, 1:] if with_fakes else None)
  # topk=1: the certificate recomputes rows, so later kernel passes run from device features too.
  host = merge_clusters(reals, fakes, labels, 8, 0.01, constraint, topk=1, mesh=mesh)
  dev = merge_clusters(_on_device(reals, mesh), _on_device(fakes, mesh), labels, 8, 0.01,
                       constraint, topk=1, mesh=mesh)
  assert np.array_equal(dev.labels, host.labels)
  assert (dev.passes, dev.recomputed_rows, dev.final_k) == (host.passes, host.recomputed_rows,
                                                            host.final_k)
  assert dev.last_weight == host.last_weight   # the same float32 distances, not merely close
  assert host.passes > 1


def test_device_features_stay_on_the_device_and_skip_the_host_upload(monkeypatch):
  support, labels = _problem(1)
  mesh = parallel.make_mesh()
  reals, fakes = _on_device(support[:, 0], mesh), _on_device(support[:, 1:], mesh)
  checked = merge._check_inputs(reals, fakes, labels, 3, 0.0, 4, 8, 'float32')
  assert all(isinstance(x, jax.Array) for x in checked[:2])
  uploaded = []
  real_put = parallel.put_global
  monkeypatch.setattr(parallel, 'put_global',
                      lambda x, s: uploaded.append(np.shape(x)) or real_put(x, s))
  want = merge_step(support[:, 0], support[:, 1:], labels, 6, 0.01, mesh=mesh)
  assert (N * L, DIM) in uploaded   # the host path uploads S
  uploaded.clear()
  assert np.array_equal(merge_step(reals, fakes, labels, 6, 0.01, mesh=mesh), want)
  assert all(len(shape) < 2 for shape in uploaded), uploaded   # only labels, sizes, row ids


def test_support_built_on_the_device_and_kernel_on_another_placement():
  support, labels = _problem(2)
  mesh = parallel.make_mesh()
  dev = support_array(_on_device(support[:, 0], mesh), _on_device(support[:, 1:], mesh))
  assert isinstance(dev, jax.Array) and dev.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(dev), support)
  assert support_array(_on_device(support[:, 0], mesh), None).shape == (N, 1, DIM)
  # A support on one device only is moved to the kernel's mesh, with the same candidates.
  one_device = jax.device_put(support, jax.devices()[0])
  sizes = np.ones(N)
  got = distance.SupportSetKernel(one_device, labels, sizes, 0.01, mesh=mesh).topk(np.arange(N), 3)
  want = support_topk(support[:, 0], support[:, 1:], labels, sizes, 0.01, 3, mesh=mesh)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_mixed_host_and_device_inputs_take_the_host_path():
  support, labels = _problem(3)
  mesh = parallel.make_mesh()
  want = merge_step(support[:, 0], support[:, 1:], labels, 5, 0.01, mesh=mesh)
  got = merge_step(support[:, 0], _on_device(support[:, 1:], mesh), labels, 5, 0.01, mesh=mesh)
  assert np.array_equal(got, want)


@pytest.mark.parametrize('where,name', [(0, 'features'), (1, 'fake_features')])
@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_device_features_raise_the_host_error(where, name, value):
  support, labels = _problem(4)
  support[5, where + (where > 0), 3] = value
  mesh = parallel.make_mesh()
  messages = []
  for reals, fakes in ((support[:, 0], support[:, 1:]),
                       (_on_device(support[:, 0], mesh), _on_device(support[:, 1:], mesh))):
    with pytest.raises(ValueError) as err:
      merge_step(reals, fakes, labels, 3, 0.0, mesh=mesh)
    messages.append(str(err.value))
  assert messages[0] == messages[1]
  assert messages[0] == f'{name} contains NaN or infinite values; expected finite features'


@pytest.mark.parametrize('features,fakes,message', [
    (np.zeros((4,), np.float32), None, 'features has shape'),
    (np.zeros((4, DIM), bool), None, 'features has dtype bool'),
    (np.zeros((4, DIM), np.float32), np.zeros((4, 2, DIM + 1), np.float32),
     'fake_features has shape'),
])
def test_device_input_errors_are_the_host_ones(features, fakes, message):
  mesh = parallel.make_mesh()
  for f, ff in ((features, fakes), (_on_device(features, mesh), _on_device(fakes, mesh))):
    with pytest.raises(ValueError, match=message) as err:
      merge_step(f, ff, np.arange(4), 1, 0.0, mesh=mesh)
    assert '\n' not in str(err.value)


def test_integer_and_bfloat16_device_features_are_merged_as_float32():
  rng = np.random.default_rng(5)
  feats = rng.integers(-4, 5, (N, DIM)).astype(np.int32)
  labels = np.arange(N)
  mesh = parallel.make_mesh()
  want = merge_step(feats, None, labels, 7, 0.0, mesh=mesh)
  assert np.array_equal(merge_step(_on_device(feats, mesh), None, labels, 7, 0.0, mesh=mesh), want)
  # Small integers are exact in bfloat16: the same values as float32.
  bf16 = _on_device(feats, mesh).astype(jax.numpy.bfloat16)
  assert np.array_equal(merge_step(bf16, None, labels, 7, 0.0, mesh=mesh), want)


def test_keep_on_device_setting():
  assert jax.default_backend() == 'cpu'
  assert parallel.keep_on_device('auto') is False   # CPU: host and device memory are the same
  assert parallel.keep_on_device('True') is True and parallel.keep_on_device(True) is True
  assert parallel.keep_on_device('False') is False and parallel.keep_on_device(False) is False
  with pytest.raises(ValueError, match="'yes'"):
    parallel.keep_on_device('yes')
