"""The device mesh (one 'data' axis), its shardings, and multi-host start-up.

Every jitted step runs over one Mesh: batches sharded on 'data', state replicated. The math is
that of the global batch, so results do not depend on the number of devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxreid.configlib import ON_DEVICE_SETTINGS

DATA_AXIS = 'data'


def initialize(distributed: bool, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Starts jax.distributed when asked; a no-op otherwise (and when already started).

  On TPU pods, SLURM and Open MPI the arguments are found automatically; elsewhere (e.g. several
  CPU processes on one machine) pass all three.
  """
  if not distributed or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=coordinator_address or None,
                             num_processes=num_processes, process_id=process_id)


def is_primary() -> bool:
  """True on the one process that writes shared files (records, figures, exported models)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process got here (a no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes) with axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = 'batch size') -> None:
  """Refuses a global batch the mesh cannot split evenly (one clear line)."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f'{what} {global_batch} is not divisible by the {n} devices of the mesh; '
                     f'use a multiple of {n}')


def host_slice(global_batch: int, mesh: Mesh) -> slice:
  """The rows of a global batch this process reads (each host reads only its own shard)."""
  check_batch_size(global_batch, mesh)
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Turns this process's rows of a batch (a pytree of numpy arrays) into global jax Arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host value every process holds in full (single- or multi-host)."""
  x = np.ascontiguousarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def keep_on_device(setting: str | bool) -> bool:
  """Whether large intermediates (the support features of a merge) stay on the devices, for a
  setting in ON_DEVICE_SETTINGS (or a bool).

  'auto' keeps them there unless the backend is CPU (host and device memory are then the same:
  nothing to gain) or several processes run: the device path is all global computations (a
  replicated array is whole on every process) and tests/test_multihost.py checks it across CPU
  processes, but not on accelerators, so in doubt 'auto' keeps the host path there; 'True' forces
  the device path.
  """
  if setting == 'auto':
    return jax.default_backend() != 'cpu' and jax.process_count() == 1
  if setting in (True, 'True'):
    return True
  if setting in (False, 'False'):
    return False
  raise ValueError(f'on-device setting {setting!r}: expected one of {ON_DEVICE_SETTINGS}')


def to_host(tree: Any) -> Any:
  """Fetches a (possibly multi-host) pytree of global Arrays as numpy on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
