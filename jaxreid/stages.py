"""Which stages of a run are finished, and whether a work dir belongs to this config."""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections
from absl import logging
from flax import traverse_util

from jaxreid import parallel, records


class RunError(RuntimeError):
  """A work dir cannot be used as asked; the message is one line saying why and what to do."""


class StageTracker:
  """Completion marks in DIR/stages.json: a finished stage is skipped when the run resumes."""

  def __init__(self, workdir: str | pathlib.Path):
    self._path = pathlib.Path(workdir) / 'stages.json'

  def _load(self) -> dict:
    try:
      return records.read_json(self._path, default={})
    except records.RecordError as e:
      # The marks only save time: every stage resumes from its own checkpoints or fakes chunks,
      # so a damaged file is set aside and the stages are re-checked from the start.
      aside = self._path.with_name(self._path.name + '.damaged')
      logging.warning('%s; moved it to %s: every stage resumes from its checkpoints', e, aside)
      if parallel.is_primary():
        os.replace(self._path, aside)
      return {}

  def done(self, name: str) -> bool:
    return name in self._load()

  def summary(self, name: str) -> dict | None:
    return self._load().get(name)

  def mark(self, name: str, summary: dict | None = None) -> None:
    if not parallel.is_primary():
      return
    marks = self._load()
    marks[name] = summary or {}
    records.write_json_atomic(self._path, marks)


  def unmark(self, name: str) -> None:
    """Forgets that `name` finished (its output turned out damaged), so this run redoes it."""
    if not parallel.is_primary():
      return
    marks = self._load()
    if marks.pop(name, None) is not None:
      records.write_json_atomic(self._path, marks)


def _flatten(d: dict) -> dict:
  """{'a.b': v} from {'a': {'b': v}}."""
  return traverse_util.flatten_dict(d, sep='.')


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose values differ between a saved config (JSON) and `config`."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(saved)
  return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))


def check_or_save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                         allow_change: bool = False, write: bool = True,
                         finished: bool = False) -> None:
  """Saves the config with a new work dir; refuses to resume one made with another config.

  Every process checks; only the one with `write` (the primary) writes. A `finished` work dir
  keeps its config whatever `allow_change` says: its results belong to that config.
  """
  path = pathlib.Path(workdir) / 'config.json'
  saved = records.read_json(
      path, advice='if this command has the config the work dir was made with, remove the file and '
                   'run again; otherwise use a new --workdir')
  if saved is not None:
    diff = config_differences(saved, config)
    if diff and finished:
      raise RunError(f'work dir {workdir} holds a finished run made with another config '
                     f'(differing keys: {", ".join(diff[:8])}{" ..." if len(diff) > 8 else ""}); '
                     'its results and config are kept as they are: use a new --workdir for this '
                     'config')
    if diff and not allow_change:
      shown = ', '.join(f'{k} ({_flatten(saved).get(k)!r} -> '
                        f'{_flatten(json.loads(config.to_json_best_effort())).get(k)!r})'
                        for k in diff[:8])
      more = f' and {len(diff) - 8} more' if len(diff) > 8 else ''
      raise RunError(f'work dir {workdir} was made with another config; differing keys: '
                     f'{shown}{more}. Use a new --workdir, or pass --allow_config_change to resume '
                     'anyway.')
    if not diff:
      return
  if write:
    records.write_json_atomic(path, json.loads(config.to_json_best_effort()))
