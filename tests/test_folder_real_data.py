"""The folder config end to end on real images: the 2-camera CUHK03 sample (skipped if absent).

Shortened (the first 80 of the 743 training identities, a 20-iteration StarGAN, one epoch per
step, one merge), so it checks that every stage runs on real data with the CPU-sized defaults and
records what the README's CUHK03 table reads, not the accuracy (near chance after so little
training).
"""

import pathlib

import numpy as np
import pytest

from jaxreid import records, run_stages
from jaxreid.camstyle.store import FakeStore
from jaxreid.configlib import load_sibling

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _first_train_identities(root, dest, num_ids):
  """A Market-layout folder of links: the first `num_ids` training identities, all test images."""
  for sub in ('bounding_box_train', 'query', 'bounding_box_test'):
    (dest / sub).mkdir(parents=True)
    for image in sorted((root / sub).glob('*.jpg')):
      if sub != 'bounding_box_train' or int(image.name[:4]) <= num_ids:
        (dest / sub / image.name).symlink_to(image)
  return len(list((dest / 'bounding_box_train').iterdir()))


@pytest.mark.slow
def test_folder_config_runs_every_stage_on_the_cuhk03_sample(tmp_path, cuhk03_root):
  c = load_sibling(str(CONFIGS / 'x.py'), 'folder').get_config()
  n = _first_train_identities(cuhk03_root, tmp_path / 'data', num_ids=80)
  assert n == 767   # CUHK03 sees each identity about 10 times
  c.data.root = str(tmp_path / 'data')
  c.camstyle.num_iters = 20
  c.camstyle.sample_every = 20
  c.camstyle.checkpoint_every = 20
  c.train.step0_epochs = 1
  c.train.later_epochs = 1
  c.cluster.max_steps = 2
  results = run_stages.run(c, str(tmp_path / 'run'))
  assert [s['clusters'] for s in results['steps']] == [n, n - int(n * 0.05)]
  for key in ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP'):
    assert 0.0 <= results[key] <= 1.0
  # The sample has identity labels, so merge quality is reported (and only reported).
  merged = results['steps'][1]
  assert 0.0 <= merged['pairwise_precision'] <= 1.0 and 0.0 < merged['purity'] <= 1.0
  # Two cameras: each image has one fake, under the other camera, at the image's own size.
  store = FakeStore.open(tmp_path / 'run' / 'fakes')
  assert store.num_cameras == 2 and len(store.camids) == n
  own = int(store.camids[0])
  fake = store.fake(0, 1 - own)
  assert fake.shape == (128, 64, 3) and fake.dtype == np.uint8
  assert (tmp_path / 'run' / 'camstyle' / 'fig2_camstyle.png').is_file()
  assert records.read_json(tmp_path / 'run' / 'results.json')['rank1'] == results['rank1']
