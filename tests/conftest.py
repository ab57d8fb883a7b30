"""Test set-up: 8 host CPU devices (set before jax is imported), shared fixtures."""

import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from jaxreid import host_memory  # noqa: E402

host_memory.keep_freed_memory()   # as the command-line runs do, before jax starts its threads

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
CUHK03 = SHARED_DATA / 'cuhk03_labeled_market'


def pytest_collection_modifyitems(items):
  """Every test that reads the real sample is marked `realdata` (`-m "not realdata"` leaves them out)."""
  for item in items:
    if 'cuhk03_root' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope='session')
def cuhk03_root():
  """The real CUHK03 sample in Market layout; tests using it skip when it is absent."""
  if not CUHK03.is_dir():
    pytest.skip(f'{CUHK03} is absent (real data is only on development machines)')
  return CUHK03


@pytest.fixture(scope='session', autouse=True)
def _compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the whole test run: both xdist workers and every
  subprocess a test starts (they inherit JAX_COMPILATION_CACHE_DIR). Library builders return fresh
  jitted functions, and most tests train the same tiny networks, so after the first compile the
  rest are disk reads (a tiny run: 180 s cold, 60 s warm on 2 cores). A size limit turns on JAX's
  file lock, so concurrent writers and readers do not see half-written entries."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent   # the run's directory, above each worker's own
  cache = root / 'xla_cache'
  cache.mkdir(exist_ok=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = str(cache)
  os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(8 << 30)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_compilation_cache_max_size', 8 << 30)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
