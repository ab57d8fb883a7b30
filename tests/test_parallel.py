import numpy as np
import pytest

from jaxreid import parallel


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


def test_put_global_places_a_host_array_by_its_sharding():
  mesh = parallel.make_mesh()
  x = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)
  rows = parallel.put_global(x, parallel.data_sharding(mesh))
  assert [s.data.shape for s in rows.addressable_shards] == [(1, 5)] * mesh.devices.size
  np.testing.assert_array_equal(rows.addressable_shards[3].data, x[3:4])
  full = parallel.put_global(x, parallel.replicated(mesh))
  assert full.sharding.is_fully_replicated
  np.testing.assert_array_equal(parallel.to_host(full), x)
