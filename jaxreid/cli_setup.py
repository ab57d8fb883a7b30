"""Process-wide set-up of the command-line entry points (jaxreid.main, jaxreid.ablations).

Kept apart from jaxreid.main, whose flags would clash with those of the other programs."""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging


class _OwnInfoOnly(std_logging.Filter):
  """Keeps library INFO chatter (orbax logs every file it writes) out of the run's log."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or 'site-packages' not in record.pathname


def _enable_compilation_cache() -> None:
  """Persistent XLA cache: a resumed or repeated run skips recompiling (minutes on CPU)."""
  import jax
  path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'jaxreid', 'jax')
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def setup_runtime() -> None:
  """What every command-line run wants: Ctrl-C that stops it, quiet library logs, the
  compilation cache and host memory kept for reuse (before jax starts its CPU backend)."""
  from jaxreid import host_memory, interrupts
  host_memory.keep_freed_memory()
  interrupts.install()
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  _enable_compilation_cache()
