"""Orbax checkpoints holding everything needed to resume a run exactly.

A checkpoint is a pytree (train state, labels, ...) plus a JSON `meta` dict (where in Algorithm 1
the run is, the best model so far, the per-step records). Orbax writes to a temporary directory
and renames it when complete, so a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

# Fault injection for the crash-resume tests: SIGKILL this process right after the N-th durable
# write (checkpoint or fakes chunk). Unset in normal use.
KILL_ENV = 'JAXREID_KILL_AFTER_WRITES'
_writes = 0


def durable_write_done() -> None:
  """Marks one durable write; the crash-resume tests use it to die at a chosen point."""
  global _writes
  _writes += 1
  if os.environ.get(KILL_ENV) and _writes >= int(os.environ[KILL_ENV]):
    os.kill(os.getpid(), signal.SIGKILL)


class Checkpointer:
  """Saves and restores (state pytree, meta dict) pairs under `directory`, numbered by `index`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self._mngr = ocp.CheckpointManager(
        os.fspath(os.path.abspath(directory)),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_index(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, index: int, state: Any, meta: dict) -> None:
    self._mngr.save(index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    # Block so that "checkpoint written" means on disk when the next epoch starts.
    self._mngr.wait_until_finished()
    durable_write_done()

  def restore_meta(self, index: int | None = None) -> dict | None:
    index = self.latest_index() if index is None else index
    if index is None:
      return None
    return self._mngr.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, abstract_state: Any, index: int | None = None,
              sharding_fn: Callable[[Any], Any] | None = None) -> Any:
    """Restores the state pytree into the shapes / dtypes (and shardings) of `abstract_state`."""
    index = self.latest_index() if index is None else index
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    if sharding_fn is not None:
      target = sharding_fn(target)
    return self._mngr.restore(
        index, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
