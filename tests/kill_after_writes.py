"""Runs `jaxreid.main` and SIGKILLs itself right after its N-th durable write (argv[1]).

A durable write is a finished checkpoint save or fakes chunk; the crash-resume tests start this
as a child process so that the kill comes from outside the package.
"""

import os
import signal
import sys

from jaxreid import checkpoint
from jaxreid.camstyle import store

_LIMIT = int(sys.argv.pop(1))
_count = 0


def _written():
  global _count
  _count += 1
  if _count >= _LIMIT:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(fn):
  def wrapped(*args, **kwargs):
    out = fn(*args, **kwargs)
    _written()
    return out
  return wrapped


checkpoint.Checkpointer.save = _after(checkpoint.Checkpointer.save)
store.write_chunk = _after(store.write_chunk)

if __name__ == '__main__':
  from jaxreid import main
  main.run()
