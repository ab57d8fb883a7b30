"""The main job: `jaxreid --config=configs/X.py --workdir=DIR [--config.a.b=v ...]`."""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from jaxreid import configlib, interrupts
from jaxreid.cli_setup import setup_runtime

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py); override fields with --config.a.b=v.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Work dir: data, checkpoints, fakes, results.')
# Launch topology of a multi-process run (with --config.distributed=True). On TPU pods, SLURM and
# Open MPI these are found automatically; for several processes on one machine pass them all.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_ALLOW_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a work dir even though its config differs.')

# Set to 1 to see the traceback behind a one-line error.
TRACEBACK_ENV = 'JAXREID_TRACEBACK'


def _fail(error: BaseException) -> None:
  """Exits with one line for an error the user can fix (the traceback on request)."""
  if os.environ.get(TRACEBACK_ENV):
    traceback.print_exception(error)
  if isinstance(error, OSError) and error.strerror:
    where = f'{error.filename}: ' if error.filename else ''
    message = f'{where}{error.strerror}'
  else:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  sys.exit(f'jaxreid: {message}')


def _interrupted() -> None:
  logging.flush()
  workdir = _WORKDIR.value if flags.FLAGS.is_parsed() else None
  kept = f' in {workdir}' if workdir else ''
  print(f'jaxreid: interrupted; what was finished is kept{kept}: run the same command again to '
        'resume', file=sys.stderr, flush=True)
  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C.
  sys.exit(130)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  setup_runtime()
  config = _CONFIG.value
  # Imported late so that flag errors come back at once.
  from jaxreid import parallel, run_stages
  try:
    configlib.validate(config)
    if not config.distributed:
      # Before the devices start (jax.distributed must start first where it is used).
      run_stages.check_workdir(_WORKDIR.value)
    parallel.initialize(config.distributed, _COORDINATOR.value, _NUM_PROCESSES.value,
                        _PROCESS_ID.value)
    import jax  # pylint: disable=import-outside-toplevel
    configlib.validate_devices(config, jax.device_count())
    run_stages.run(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, _user_errors()):
      _fail(e)
    raise


# The errors a user can cause and fix, each one line: (module, class). Only modules already
# imported are looked at (one that was not cannot have raised), so an early error stays cheap.
_USER_ERRORS = (('jaxreid.run_stages', 'RunError'), ('jaxreid.data.layouts', 'DataError'),
                ('jaxreid.reid.export', 'ModelError'), ('jaxreid.camstyle.store', 'StoreError'),
                ('jaxreid.configlib', 'ConfigError'), ('jaxreid.records', 'RecordError'),
                ('jaxreid.checkpoint', 'CheckpointError'),
                ('jaxreid.reid.pretrained', 'PretrainedError'))


def _user_errors() -> tuple[type, ...]:
  return (OSError,) + tuple(getattr(sys.modules[module], name) for module, name in _USER_ERRORS
                            if module in sys.modules)


def run():
  """Console-script entry: one clear line (no traceback) for errors a user caused.

  `jaxreid plot --workdir=DIR` draws a run's figures (jaxreid.viz) instead of running.
  """
  if len(sys.argv) > 1 and sys.argv[1] == 'plot':
    from jaxreid import viz
    sys.exit(viz.plot_main(sys.argv[2:]))
  if len(sys.argv) > 1 and sys.argv[1] == 'export':
    from jaxreid import serving
    sys.exit(serving.export_main(sys.argv[2:]))
  flags.mark_flags_as_required(['config', 'workdir'])
  try:
    app.run(main, flags_parser=_parse_flags)
  except configlib.ConfigError as e:
    _fail(e)
  except KeyboardInterrupt:
    _interrupted()
  except Exception:  # pylint: disable=broad-except
    # A Ctrl-C inside a C extension's import comes back as ImportError, for example.
    if interrupts.pending():
      _interrupted()
    raise


def _parse_flags(argv):
  config_file = configlib.config_file_from_argv(argv)
  if config_file is not None and not os.path.isfile(config_file):
    sys.exit(f'jaxreid: --config={config_file}: no such config file (expected e.g. '
             'configs/synthetic.py)')
  if config_file is not None:
    try:
      configlib.load_config_file(config_file)
    except configlib.ConfigError as e:
      _fail(e)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # absl and ml_collections print tracebacks and usage text; users need the line naming the key.
    sys.exit(f'jaxreid: {configlib.describe_override_error(argv, e)}')


if __name__ == '__main__':
  run()
