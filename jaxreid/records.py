"""What a run leaves for people: atomic JSON files, metrics as JSON lines and TensorBoard events."""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np

from jaxreid import atomic


class RecordError(ValueError):
  """A record in a work dir is damaged; the message is one line naming the file and what to do."""


def _plain(obj: Any) -> Any:
  """numpy scalars/arrays -> Python values, so records are plain JSON."""
  if isinstance(obj, Mapping):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON so that a reader (or a killed run) never sees a half-written file."""
  with atomic.writing(path) as tmp, open(tmp, 'w') as f:
    json.dump(_plain(obj), f, indent=2, sort_keys=False)


def read_json(path: str | os.PathLike, default: Any = None, kind: type | None = dict,
              advice: str = '') -> Any:
  """A JSON record, `default` when absent; RecordError (one line) when it is damaged.

  `kind` is the type the record must have (None: any); `advice` says what the user can do.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return default
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RecordError(f'{path} is damaged (not JSON: {e}){"; " + advice if advice else ""}') from e
  if kind is not None and not isinstance(value, kind):
    raise RecordError(f'{path} is damaged (a JSON {type(value).__name__}, expected a '
                      f'{kind.__name__}){"; " + advice if advice else ""}')
  return value


class MetricsWriter:
  """Appends scalar metrics to DIR/metrics.jsonl and to TensorBoard event files under DIR/tb."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self._path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._enabled = enabled
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter  # writes event files without TensorFlow
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / 'tb'))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = '') -> None:
    if not self._enabled:
      return
    scalars = {f'{prefix}{k}': float(v) for k, v in metrics.items()
               if np.ndim(v) == 0 and isinstance(v, (int, float, np.number, np.ndarray))}
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), 'time': time.time(), **scalars}) + '\n')
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The JSON-lines metrics of a work dir (for plots and tests)."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
