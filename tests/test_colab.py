"""The Colab demo: committed executed at its default size, and it runs end to end at its tiny size showing every figure,
the optional density head's cell and the real-images cell (ImageNet backbone) included."""

import base64
import io
import json
import os
import pathlib

import nbformat
import pytest
from PIL import Image

from jaxreid import viz
from jaxreid.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'colab' / 'jaxreid_demo.ipynb'
COLAB_URL = ('https://colab.research.google.com/github/jaxreid/jaxreid/blob/main/colab/'
             'jaxreid_demo.ipynb')


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def test_notebook_is_committed_executed_at_its_default_size_and_installs_from_the_repository():
  """A reader on GitHub sees the run: every code cell ran, in order, without an error, and the
  outputs hold the default-size run's results table and every figure."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  cells = _code_cells(nb)
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
  outputs = [o for c in cells for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert "size 'colab'" in text  # not the test suite's tiny size
  pngs = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(pngs) == len(viz.FIGURES)
  tables = [o.data['text/markdown'] for o in outputs if 'text/markdown' in o.get('data', {})]
  assert len(tables) == 1 and '| kept model' in tables[0]
  assert COLAB_URL in nb.cells[0].source  # the badge opens this very file
  install = cells[0].source
  assert 'jaxreid @ git+' in install and "'https://github.com/jaxreid/jaxreid'" in install
  assert nb.metadata.kernelspec.name == 'python3'


@pytest.mark.slow
def test_notebook_runs_at_tiny_size_and_shows_every_figure(tmp_path):
  from nbclient import NotebookClient
  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / 'run'
  # The real-images cell, on a Market-layout folder of synthetic JPEGs (128 x 64, 3 cameras).
  folder = synthetic.write_market_folder(tmp_path / 'market', num_cameras=3, num_train_ids=8,
                                         num_test_ids=4, images_per_id=4, height=128, width=64,
                                         seed=0)
  env = dict(os.environ, JAXREID_DEMO_SIZE='tiny', JAXREID_DEMO_WORKDIR=str(workdir),
             JAXREID_DEMO_DENSITY='1', JAXREID_DEMO_DATA=str(folder), JAX_PLATFORMS='cpu')
  # Colab has one host device; the 8 virtual devices of the test session would only add compiles.
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  client = NotebookClient(nb, kernel_name='python3', timeout=600,
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute(env=env)  # raises CellExecutionError, with the cell, if any cell fails

  outputs = [o for c in _code_cells(nb) for o in c.outputs]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  # The kernel used this checkout: nothing was installed or cloned.
  assert f'jaxreid from {REPO / "jaxreid" / "__init__.py"}' in text
  assert not (tmp_path / 'jaxreid_repo').exists()
  pngs = [o.data['image/png'] for o in outputs if 'image/png' in o.get('data', {})]
  assert len(pngs) == len(viz.FIGURES)
  for png in pngs:
    with Image.open(io.BytesIO(base64.b64decode(png))) as im:
      assert im.format == 'PNG' and im.width >= 300 and im.height >= 100
  tables = [o.data['text/markdown'] for o in outputs if 'text/markdown' in o.get('data', {})]
  # The synthetic run, the density head, the folder run from the ImageNet weights.
  assert len(tables) == 3 and all('| kept model' in t for t in tables)
  assert "backbone efficientnet_lite0, initialised from 'efficientnet_lite0'" in text
  folder_results = json.loads((tmp_path / 'run_folder' / 'results.json').read_text())
  assert [s['clusters'] for s in folder_results['steps']] == [32, 29]   # mp 0.1 of 32 images
  density = json.loads((tmp_path / 'run_density' / 'results.json').read_text())
  assert density['method'] == 'density' and len(density['epochs']) == 3
  for name in viz.FIGURES:
    assert (workdir / 'figures' / f'{name}.png').is_file(), name
