"""A tiny synthetic run (every stage, a minute or two on 2 CPU cores), shared by the end-to-end tests."""

import pathlib

from jaxreid.configlib import load_sibling

REPO = pathlib.Path(__file__).resolve().parents[1]

OVERRIDES = {
    'synthetic.num_cameras': 3, 'synthetic.num_train_ids': 10, 'synthetic.num_test_ids': 6,
    'synthetic.images_per_id': 4,
    'data.height': 64, 'data.width': 32,
    'camstyle.height': 64, 'camstyle.width': 32, 'camstyle.load_height': 72,
    'camstyle.load_width': 36, 'camstyle.d_repeat_num': 4, 'camstyle.num_iters': 6,
    'camstyle.checkpoint_every': 2, 'camstyle.sample_every': 1000, 'camstyle.batch_size': 8,
    'camstyle.chunk_size': 16,
    'train.batch_size': 8, 'train.step0_epochs': 2, 'train.later_epochs': 1,
    'cluster.max_steps': 3, 'cluster.merge_percent': 0.2, 'model.embedding_dim': 32,
    'eval.batch_size': 16,
}


def cli_args() -> list[str]:
  """The tiny run as command-line flags."""
  return ['--config=configs/synthetic.py'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]


def config():
  """The tiny run as a ConfigDict."""
  c = load_sibling(str(REPO / 'configs' / 'x.py'), 'synthetic').get_config()
  c.lock()   # a misspelt key fails instead of being added
  c.update_from_flattened_dict(OVERRIDES)
  c.unlock()
  return c
