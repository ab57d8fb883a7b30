"""One of 2 processes x 4 CPU devices (argv: process id, coordinator port): support features kept
on the devices give the host path's features, labels and errors. Prints DONE when all held."""

import os
import pathlib
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.distributed.initialize(coordinator_address=f'127.0.0.1:{sys.argv[2]}', num_processes=2,
                           process_id=int(sys.argv[1]))

from jaxreid import configlib, parallel  # noqa: E402
from jaxreid.clustering import merge_clusters  # noqa: E402
from jaxreid.reid import extract, model  # noqa: E402


def main():
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8 and jax.process_count() == 2
  cfg = configlib.load_sibling(
      str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common').get_config()
  cfg.model.arch, cfg.model.embedding_dim = 'tiny', 16
  cfg.data.height, cfg.data.width = 32, 16
  cfg.eval.batch_size = 8
  variables = model.init_variables(model.build_model(cfg.model), jax.random.key(0), 32, 16)
  images = np.random.default_rng(0).integers(0, 256, (39, 32, 16, 3), dtype=np.uint8)
  # 39 images in batches of 8, each process decoding its half of every batch.
  get = lambda i, s: images[3 * i + s]  # noqa: E731
  host = extract.extract_support_features(variables, cfg, get, 13, 3, mesh=mesh)
  dev = extract.extract_support_features(variables, cfg, get, 13, 3, mesh=mesh, on_device=True)
  assert dev.sharding.is_fully_replicated and not dev.is_fully_addressable
  assert np.array_equal(np.asarray(dev), host)
  for constraint in (True, False):
    want = merge_clusters(host[:, 0], host[:, 1:], np.arange(13), 4, 0.01, constraint, topk=1,
                          mesh=mesh)
    got = merge_clusters(dev[:, 0], dev[:, 1:], np.arange(13), 4, 0.01, constraint, topk=1,
                         mesh=mesh)
    assert np.array_equal(got.labels, want.labels) and got.passes == want.passes > 1
  try:
    bad = dev.at[2, 1, 0].set(np.nan)
    merge_clusters(bad[:, 0], bad[:, 1:], np.arange(13), 4, 0.01, mesh=mesh)
  except ValueError as e:
    assert str(e) == 'fake_features contains NaN or infinite values; expected finite features'
  else:
    raise AssertionError('NaN not refused')
  print('DONE')


if __name__ == '__main__':
  main()
