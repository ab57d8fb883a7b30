"""Host memory kept for reuse: XLA:CPU's large step buffers are not page-faulted in again each step."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxreid import host_memory

# Nine 19 MB slices live at once (a depthwise kernel gradient's taps): above glibc's mmap threshold.
_PROBE = textwrap.dedent('''
  import resource
  from jaxreid import host_memory
  kept = host_memory.keep_freed_memory()
  import jax, jax.numpy as jnp
  n, h, w, c = 16, 64, 32, 144
  a = jnp.ones((n, h + 2, w + 2, c)); b = jnp.ones((n, h, w, c))
  f = jax.jit(lambda a, b: jnp.stack([jnp.sum(a[:, i:i + h, j:j + w] * b, (0, 1, 2))
                                      for i in range(3) for j in range(3)]))
  for _ in range(20):   # the kept heap settles first (fragmentation between the taps)
    jax.block_until_ready(f(a, b))
  faults = []
  for _ in range(20):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(a, b))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
  print(kept, sorted(faults)[len(faults) // 2])
''')


def _median_faults_per_call(keep: bool) -> tuple[str, int]:
  env = dict(os.environ, JAXREID_KEEP_FREED_MEMORY='1' if keep else '0', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[-2], int(out[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_kept_memory_stops_the_page_faults_of_every_step():
  kept, faults_kept = _median_faults_per_call(True)
  default, faults_default = _median_faults_per_call(False)
  assert (kept, default) == ('True', 'False')
  # Median call after 20 warm-up calls: glibc's default maps the ~170 MB of slices afresh each time
  # (~41,000 faults of 4 KiB pages); the kept heap has settled and reuses them (0 here).
  assert faults_default > 20_000
  assert faults_kept < faults_default / 5


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_OPT_OUT, '0')
  assert host_memory.keep_freed_memory() is False


def test_an_accelerator_platform_leaves_the_allocator_alone(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert host_memory.keep_freed_memory() is False
