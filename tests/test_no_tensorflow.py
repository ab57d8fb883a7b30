"""Importing jaxreid and reading a data set never imports TensorFlow (checked in a clean process).

A stand-in `tensorflow` package goes first on the path: any attempt to import TensorFlow, even one
that a library would catch and survive, leaves a note, so the check also holds for users who do
have TensorFlow installed.
"""

import os
import subprocess
import sys

from conftest import REPO

STUB = """\
import os, traceback
with open(os.environ['TF_IMPORT_NOTES'], 'a') as f:
  f.write(''.join(traceback.format_stack(limit=12)) + '\\n')
raise ImportError('tensorflow must not be imported by jaxreid')
"""

SCRIPT = """\
import importlib, pathlib, pkgutil, sys
import ml_collections
import numpy as np
from PIL import Image
import jaxreid
from jaxreid import data, parallel
from jaxreid.data import pipeline

root = pathlib.Path(sys.argv[1])
names = {'bounding_box_train': ['0001_c1s1_000001_00.jpg', '0002_c2s1_000002_00.jpg'],
         'query': ['0003_c1s1_000003_00.jpg'], 'bounding_box_test': ['0003_c2s1_000004_00.jpg']}
for k, (folder, files) in enumerate(names.items()):
  (root / 'market' / folder).mkdir(parents=True)
  for name in files:
    Image.new('L' if k else 'RGB', (8, 16), 60 * k).save(root / 'market' / folder / name)
config = ml_collections.ConfigDict({'name': 'folder', 'root': str(root / 'market')})
splits = data.load_splits(config, root / 'tfds')
train = splits['train']
mesh = parallel.make_mesh()
batch = next(pipeline.train_batches(train.image, np.arange(len(train)), np.zeros(len(train)),
                                    batch_size=2, height=16, width=8, seed=0, epoch=0, mesh=mesh,
                                    augment=lambda image, rng: image))
images, valid = next(pipeline.eval_batches(splits['query'].image, [0], batch_size=1, height=16,
                                           width=8, mesh=mesh))
assert batch['image'].shape == (2, 16, 8, 3) and valid == 1, (batch['image'].shape, valid)
for module in pkgutil.walk_packages(jaxreid.__path__, 'jaxreid.'):
  try:
    importlib.import_module(module.name)
  except Exception:  # other modules' own import errors are their tests' business
    pass
print('tensorflow loaded:', 'tensorflow' in sys.modules)
"""


def test_reading_a_data_set_never_imports_tensorflow(tmp_path):
  stub = tmp_path / 'stub' / 'tensorflow'
  stub.mkdir(parents=True)
  (stub / '__init__.py').write_text(STUB)
  notes = tmp_path / 'tf_imports.txt'
  env = dict(os.environ, TF_IMPORT_NOTES=str(notes), JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([str(stub.parent), str(REPO)]))
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path / 'work')], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'tensorflow loaded: False' in result.stdout
  assert not notes.exists(), 'TensorFlow import attempted from:\n' + notes.read_text()
  # The stand-in is really in the way: importing TensorFlow there leaves a note.
  subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env, capture_output=True,
                 check=False, timeout=60)
  assert notes.exists()
