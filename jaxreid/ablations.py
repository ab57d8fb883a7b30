"""The paper's ablations (Table I, Table III, Fig. 6) as config overrides, run side by side.

  python -m jaxreid.ablations --config=configs/synthetic.py --workdir=runs/ablations
  python -m jaxreid.ablations --config=configs/synthetic.py --workdir=runs/mp \
      --sweep=cluster.merge_percent=0.03,0.05,0.1
  python -m jaxreid.ablations --config=configs/synthetic.py --workdir=runs/lambda \
      --sweep=cluster.size_penalty=0,0.001,0.003,0.005

Every variant is an ordinary run in <workdir>/<variant> (resumable like any run). Variants share
the data set and, where their StarGAN settings agree, the trained StarGAN and its fakes, which
are made once. The table is printed and written to <workdir>/table.md; with `full` it also shows the full run's
step 0 (before any merge). Reference rows for a data set with identities, e.g. real images:

  python -m jaxreid.ablations --config=configs/folder.py --config.data.root=DIR --workdir=runs/t1 \
      --only=raw_pixels,untrained,full,no_clustering,no_style_transfer,true_identities
"""

from __future__ import annotations

import ast
import copy
import pathlib
import shutil
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxreid import configlib, records
from jaxreid.cli_setup import setup_runtime

# name -> (description, overrides). "Without clustering" trains step 0 alone for as many epochs as
# the whole full run, so both see the same amount of training (see `variants`).
ABLATIONS = {
    'full': ('full method', {}),
    'no_clustering': ('w/o clustering', {'cluster.enabled': False}),
    'no_style_transfer': ('w/o style transfer', {'camstyle.enabled': False}),
    'no_diversity': ('w/o diversity (lambda = 0)', {'cluster.size_penalty': 0.0}),
    'no_constraint': ('w/o clustering constraint', {'cluster.constraint': False}),
    # Reference rows, not the method: the backbone as initialised (with an ImageNet
    # init_checkpoint, the ImageNet features), and the same network, schedule and support sets
    # trained on the true identities (a supervised upper bound).
    'untrained': ('backbone as initialised, no training',
                  {'camstyle.enabled': False, 'cluster.enabled': False, 'train.step0_epochs': 0}),
    'true_identities': ('upper bound: trained on the true identities',
                        {'train.true_identities': True, 'cluster.enabled': False}),
    # The density head (Cluster Contrast), without and with the fakes in its clustering.
    'density': ('density head (DBSCAN + cluster memory)',
                {'cluster.method': 'density', 'camstyle.enabled': False}),
    'density_fakes': ('density head + support sets', {'cluster.method': 'density',
                                                      'density.use_fakes': True}),
}
# Rows that are not runs: retrieval on the test split's raw pixels.
BASELINES = {'raw_pixels': 'raw pixels (mean-subtracted, L2-normalised)'}
# Run by default: the paper's ablations; the rest are asked for with --only.
DEFAULT_ABLATIONS = ('full', 'no_clustering', 'no_style_transfer', 'no_diversity', 'no_constraint')
# Trained for as many epochs as the whole full run, with the decay at the same two thirds.
_FULL_LENGTH = ('no_clustering', 'true_identities')

def total_epochs(config) -> int:
  """Epochs the full method trains over all its steps."""
  from jaxreid.loops.algorithm1 import num_steps
  steps = num_steps(config, num_images=1)
  return config.train.step0_epochs + (steps - 1) * config.train.later_epochs


def with_overrides(config, overrides: dict):
  """A copy of `config` with dotted-key overrides applied (unknown keys fail, naming the key)."""
  config = copy.deepcopy(config)
  was_locked = config.is_locked
  config.lock()   # a locked ConfigDict refuses new keys instead of adding them
  for key, value in overrides.items():
    try:
      config.update_from_flattened_dict({key: value})
    except (AttributeError, KeyError):
      raise configlib.ConfigError(f'unknown config key {key}') from None
    except TypeError as e:
      raise configlib.ConfigError(f'{key}={value!r}: {e}') from None
  if not was_locked:
    config.unlock()
  return config


def _parse(text: str):
  """A --sweep value as a Python literal (0.05, 3, True; true / false too), else the string."""
  if text.strip().lower() in ('true', 'false'):
    return text.strip().lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def variants(config, only=None, sweep: str = '') -> dict:
  """name -> (description, config) of the runs to make."""
  out = {}
  if sweep:
    key, _, values = sweep.partition('=')
    if not values:
      raise configlib.ConfigError(f'--sweep={sweep!r}: expected key=v1,v2,...')
    for value in values.split(','):
      cfg = with_overrides(config, {key: _parse(value)})
      out[f'{key.split(".")[-1]}={value}'] = (f'{key} = {value}', cfg)
    return out
  for name in only or DEFAULT_ABLATIONS:
    if name in BASELINES:
      continue
    if name not in ABLATIONS:
      raise configlib.ConfigError(f'unknown ablation {name!r}: expected one of '
                                  f'{[*ABLATIONS, *BASELINES]}')
    description, overrides = ABLATIONS[name]
    cfg = with_overrides(config, overrides)
    if name in _FULL_LENGTH:
      # The paper trains w/o clustering 60 epochs with the decay after 40; here it gets the full
      # run's epochs, with the decay at the same two thirds.
      total = total_epochs(config)
      cfg.train.step0_epochs = total
      cfg.train.step0_lr_decay_epoch = round(total * 2 / 3)
    out[name] = (description, cfg)
  return out


def _share_camstyle(source: pathlib.Path, target: pathlib.Path) -> None:
  """Copies a finished StarGAN + fakes into a new work dir whose StarGAN config is the same."""
  from jaxreid.run_stages import StageTracker
  src, dst = StageTracker(source), StageTracker(target)
  if dst.done('camstyle_generate') or not src.done('camstyle_generate'):
    return
  for sub in ('camstyle', 'fakes'):
    if (target / sub).exists():
      shutil.rmtree(target / sub)
    if (source / sub).exists():    # no camstyle folder with oracle fakes
      shutil.copytree(source / sub, target / sub)
  if src.done('camstyle_train'):
    dst.mark('camstyle_train', src.summary('camstyle_train'))
  dst.mark('camstyle_generate', src.summary('camstyle_generate'))


def _same_camstyle(a, b) -> bool:
  """Whether two configs train the same StarGAN on the same images (so its fakes can be shared)."""
  return all(a[k] == b[k] for k in ('camstyle', 'data', 'synthetic', 'seed'))


def run_all(config, workdir: str | pathlib.Path, only=None, sweep: str = '') -> list[dict]:
  """Runs (or resumes) every variant; returns one row per variant and writes table.md."""
  from jaxreid import run_stages
  workdir = pathlib.Path(workdir)
  config = copy.deepcopy(config)
  if not config.data.tfds_dir:
    config.data.tfds_dir = str(workdir / 'tfds')   # one data build for all variants
  rows, donor = [], None
  for name in ([] if sweep else [n for n in only or () if n in BASELINES]):
    print(f'=== {name}: {BASELINES[name]}', flush=True)
    rows.append({'variant': name, 'description': BASELINES[name],
                 **raw_pixel_metrics(config, workdir)})
  for name, (description, cfg) in variants(config, only, sweep).items():
    configlib.validate(cfg)
    run_dir = workdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.camstyle.enabled and donor is not None and _same_camstyle(cfg, donor[1]):
      _share_camstyle(donor[0], run_dir)
    print(f'=== {name}: {description}', flush=True)
    results = run_stages.run(cfg, str(run_dir))
    if cfg.camstyle.enabled and donor is None:
      donor = (run_dir, cfg)
    rows.append({'variant': name, 'description': description, **results})
    if name == 'full' and len(results['steps']) > 1:
      rows.append({'variant': 'full_step0', 'description': 'step 0 alone (the full run before '
                   'its first merge)', **results['steps'][0]})
  table = format_table(rows)
  (workdir / 'table.md').write_text(table + '\n')
  records.write_json_atomic(workdir / 'table.json', rows)
  print(table)
  return rows


def raw_pixel_metrics(config, workdir: pathlib.Path) -> dict:
  """Test metrics of raw pixels at the config's input size, minus the mean training image."""
  from jaxreid import run_stages
  from jaxreid.data import augment
  from jaxreid.evaluation import evaluate_features, raw_pixel_features
  from jaxreid.loops.common import metrics_of
  sets = run_stages.load_data(config, run_stages.RunPaths(pathlib.Path(workdir)))
  size = (config.data.height, config.data.width)

  def pixels(split, rows):
    return np.stack([augment.resize(split.image(i), *size) for i in rows])

  total = np.zeros((*size, 3), np.float64)
  for start in range(0, len(sets.train), 1024):   # the mean image, a chunk in memory at a time
    total += pixels(sets.train, range(start, min(start + 1024, len(sets.train)))).sum(0)
  mean = total / len(sets.train)
  q, g = sets.query, sets.gallery
  result = evaluate_features(raw_pixel_features(pixels(q, range(len(q))), mean),
                             raw_pixel_features(pixels(g, range(len(g))), mean),
                             q.pids, g.pids, q.camids, g.camids, max_rank=config.eval.max_rank)
  return metrics_of(result)


def format_table(rows: list[dict]) -> str:
  """A markdown table: rank-1/5/10/20, mAP and mINP (%) of each variant's kept model."""
  from jaxreid.evaluation import METRIC_KEYS
  lines = ['| variant | rank-1 | rank-5 | rank-10 | rank-20 | mAP | mINP |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    cells = ' | '.join(f'{100 * r[k]:.1f}' for k in METRIC_KEYS)
    lines.append(f"| {r['description']} | {cells} |")
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  setup_runtime()
  try:
    run_all(_CONFIG.value, _WORKDIR.value, _ONLY.value, _SWEEP.value)
  except configlib.ConfigError as e:
    sys.exit(f'jaxreid.ablations: {e}')


def _define_flags():
  """The command line's flags; defined only when run as a program, so that importing this module
  beside jaxreid.main (which defines --config too) does not clash."""
  global _CONFIG, _WORKDIR, _ONLY, _SWEEP
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file.', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Folder holding one work dir per variant.')
  _ONLY = flags.DEFINE_list('only', list(DEFAULT_ABLATIONS),
                            f'Variants to run, from {[*ABLATIONS, *BASELINES]}.')
  _SWEEP = flags.DEFINE_string('sweep', '', 'key=v1,v2,...: run the full method once per value '
                               'instead of the ablations (e.g. cluster.merge_percent=0.03,0.05).')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
