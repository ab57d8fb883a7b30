"""Orbax checkpoints holding everything needed to resume a run exactly.

A checkpoint is a pytree (train state, labels, ...) plus a JSON `meta` dict (where in Algorithm 1
the run is, the best model so far, the per-step records). Orbax writes to a temporary directory
and renames it when complete, so a run killed mid-save resumes from the previous checkpoint. A
checkpoint damaged afterwards (a truncated file, an emptied meta) is set aside when the
Checkpointer opens, and the run resumes from the previous kept one.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxreid import interrupts, parallel


class CheckpointError(RuntimeError):
  """No checkpoint of a stage can be restored; the message is one line saying what to do."""


class Checkpointer:
  """Saves and restores (state pytree, meta dict) pairs under `directory`, numbered by `index`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self._directory = pathlib.Path(os.path.abspath(directory))
    self._max_to_keep = max_to_keep
    self._mngr = self._open()
    self._set_aside_damaged()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.fspath(self._directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True),
        # Named up front so that reading a checkpoint's metadata before any save or restore in
        # this process (resume) knows its handlers instead of warning that it cannot.
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def _problem(self, index: int) -> str | None:
    """Why checkpoint `index` cannot be restored (None if it can): reads its meta and arrays."""
    try:
      meta = self._mngr.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      if not isinstance(meta, dict):
        return f'meta is a {type(meta).__name__}, expected a dict'
      # Restored as host numpy arrays: this only proves every byte is readable.
      metadata = self._mngr.item_metadata(index)['state']
      as_numpy = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
      self._mngr.restore(index, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(as_numpy)))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for damaged bytes; any means "not restorable".
      return f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
    return None

  def _set_aside_damaged(self) -> None:
    """Moves a damaged latest checkpoint to DIR.damaged/ (kept, not deleted) when an earlier one
    restores; CheckpointError (one line) when none does."""
    while (index := self._mngr.latest_step()) is not None:
      problem = self._problem(index)
      if problem is None:
        return
      earlier = [s for s in self._mngr.all_steps() if s < index]
      # An earlier checkpoint that restores shows the latest is damaged (not this code unable to
      # read any checkpoint); without one, nothing is moved.
      if not earlier or self._problem(max(earlier)) is not None:
        raise CheckpointError(
            f'checkpoint {self._directory / str(index)} cannot be restored ({problem[:200]}) and '
            f'no earlier kept one can; remove {self._directory} to redo this stage from its start')
      aside = self._directory.with_name(self._directory.name + '.damaged') / str(index)
      logging.warning('checkpoint %s is damaged (%s); moved it to %s and resuming from '
                      'checkpoint %d', self._directory / str(index), problem[:300], aside,
                      max(earlier))
      if parallel.is_primary():
        aside.parent.mkdir(parents=True, exist_ok=True)
        if aside.exists():
          aside = aside.with_name(f'{index}.{os.getpid()}')
        os.replace(self._directory / str(index), aside)
      parallel.barrier(f'checkpoint_set_aside_{index}')
      self._mngr.close()
      self._mngr = self._open()

  def latest_index(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, index: int, state: Any, meta: dict) -> None:
    self._mngr.save(index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    # Block so that "checkpoint written" means on disk when the next epoch starts.
    self._mngr.wait_until_finished()
    # Nothing is lost by stopping here, so a Ctrl-C that was swallowed on its way stops the run.
    interrupts.raise_if_pending()

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
