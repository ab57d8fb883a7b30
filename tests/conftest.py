"""Test set-up: 8 host CPU devices (set before jax is imported), shared fixtures."""

import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
CUHK03 = SHARED_DATA / 'cuhk03_labeled_market'


@pytest.fixture(scope='session')
def cuhk03_root():
  """The real CUHK03 sample in Market layout; tests using it skip when it is absent."""
  if not CUHK03.is_dir():
    pytest.skip(f'{CUHK03} is absent (real data is only on development machines)')
  return CUHK03


@pytest.fixture(scope='session', autouse=True)
def _compilation_cache(tmp_path_factory):
  """Library builders return fresh jitted functions; a session-wide persistent compilation cache
  turns the repeated compiles of repeated trainings (the resume tests) into disk reads."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
