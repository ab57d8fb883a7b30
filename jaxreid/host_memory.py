"""Host memory reuse for XLA:CPU: freed step buffers stay in the process instead of going back to the OS.

XLA:CPU allocates a step's temporary buffers with malloc at every execution. glibc serves an
allocation above its mmap threshold (at most 32 MiB) with a fresh mapping and returns it on free,
and memory freed in a per-thread arena is handed back as well, so every step page-faults its large
buffers in again: the depthwise convolutions' kernel gradients of EfficientNet-Lite0 at 256x128,
batch 16, spent more time in the kernel's page zeroing than in arithmetic (41,000 minor faults a
call for nine 19 MB taps; 110 ms against 42 ms with the memory kept). Measured on the train step:
docs/benchmarks.md.

`keep_freed_memory()` asks glibc for one arena, no mmap-served allocations and no trimming, when
jax will run on the CPU. The price is resident memory: the heap keeps its peak, and fragmentation
between differently sized steps can add to it (EfficientNet-Lite0 train steps of batch 32 and 16
in turns: 4.2 GB resident against 2.2 GB at 128x64, 10-12 GB against 3.9 GB at 256x128).
JAXREID_KEEP_FREED_MEMORY=0 keeps glibc's default.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# An opt-out for a process that must hand memory back (e.g. one sharing a host with others).
ENV_OPT_OUT = 'JAXREID_KEEP_FREED_MEMORY'


def _expects_cpu_backend() -> bool:
  """True unless JAX_PLATFORMS or an installed accelerator plugin points jax elsewhere."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if importlib.util.find_spec('libtpu') is not None:
    return False
  return not any(importlib.metadata.entry_points(group='jax_plugins'))


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse; True if it took effect (CPU jax, Linux, glibc).

  Call it before jax starts its CPU backend (the first computation or device query): threads that
  XLA starts afterwards then share the one arena. Set JAXREID_KEEP_FREED_MEMORY=0 to skip it.
  """
  if os.environ.get(ENV_OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  if platform.libc_ver()[0] != 'glibc':
    return False
  if not _expects_cpu_backend():   # an accelerator's buffers are not glibc's
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # A trim threshold of -1 turns trimming off (a finite one still trims a step's buffers of
  # gigabytes at 256x128).
  results = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, -1)]
  return all(r == 1 for r in results)
