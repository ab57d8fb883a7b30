import jax
import numpy as np
import pytest

from jaxreid import parallel


def test_suite_runs_on_eight_host_devices():
  assert jax.device_count() == 8


def test_shard_batch_splits_rows_over_data_axis():
  mesh = parallel.make_mesh()
  batch = {'x': np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
  arr = parallel.shard_batch(batch, mesh)['x']
  assert arr.shape == (16, 3)
  assert len(arr.addressable_shards) == 8
  np.testing.assert_array_equal(arr.addressable_shards[1].data, batch['x'][2:4])
  np.testing.assert_array_equal(parallel.to_host(arr), batch['x'])


def test_indivisible_batch_is_refused_with_clear_message():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    parallel.check_batch_size(12, mesh)
