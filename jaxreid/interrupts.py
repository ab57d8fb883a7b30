"""Ctrl-C that is never lost: a SIGINT handler that also leaves a mark checked at safe points.

Python runs a signal handler between bytecodes, wherever the main thread is; when that is inside a
garbage-collection callback (jax registers one) the KeyboardInterrupt is printed as "Exception
ignored" and dropped, and the run would go on to its end. The mark makes the next stage boundary
or checkpoint stop the run instead.
"""

from __future__ import annotations

import signal
import sys
import threading

_pending = False


def _on_sigint(signum, frame):  # pylint: disable=unused-argument
  global _pending
  _pending = True
  raise KeyboardInterrupt


def _quiet_about_interrupts(unraisable, _default=sys.unraisablehook):
  # The swallowed Ctrl-C is handled through the mark: its "Exception ignored" traceback would only
  # bury the one line that says how to resume.
  if not isinstance(unraisable.exc_value, KeyboardInterrupt):
    _default(unraisable)


def install() -> None:
  """Installs the handler (command-line runs; only the main thread may)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_about_interrupts


def pending() -> bool:
  """Whether a Ctrl-C arrived (it may have surfaced as another error, e.g. in a C import)."""
  return _pending


def raise_if_pending() -> None:
  """Raises KeyboardInterrupt if a Ctrl-C arrived and was swallowed on its way."""
  if _pending:
    raise KeyboardInterrupt
