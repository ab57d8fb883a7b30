"""Re-executes the Colab demo at its default size and commits its outputs into the notebook.

A reader on GitHub sees the run's log, tables and figures without running it, so after a change
that moves results the notebook is executed again:

  python -m jaxreid.tools.execute_notebook [--notebook=colab/jaxreid_demo.ipynb] [--size=colab]

It runs in a fresh temporary directory on one CPU device (as Colab's CPU runtime has) with this
checkout on the kernel's path, and stores every embedded PNG with a 256-colour palette (the figures
are flat plots: ~3x smaller, so the notebook stays under the 2 MB limit for committed files).
Needs the test extra (`pip install -e '.[test]'`: nbclient, ipykernel).
"""

from __future__ import annotations

import base64
import io
import os
import pathlib
import tempfile

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[2]
_NOTEBOOK = flags.DEFINE_string('notebook', str(REPO / 'colab' / 'jaxreid_demo.ipynb'),
                                'The notebook to execute and overwrite.')
_SIZE = flags.DEFINE_string('size', 'colab', 'JAXREID_DEMO_SIZE for the run.')
_TIMEOUT = flags.DEFINE_integer('timeout', 3600, 'Seconds a cell may take.')


def palette_png(data: str) -> str:
  """A base64 PNG re-encoded with an adaptive 256-colour palette."""
  from PIL import Image
  with Image.open(io.BytesIO(base64.b64decode(data))) as im:
    out = io.BytesIO()
    im.convert('RGB').quantize(colors=256).save(out, format='PNG', optimize=True)
  return base64.b64encode(out.getvalue()).decode('ascii')


def execute(path: pathlib.Path, size: str, timeout: int) -> None:
  """Executes the notebook at `path` in a temporary directory and overwrites it with the outputs."""
  import nbformat
  from nbclient import NotebookClient
  nb = nbformat.read(path, as_version=4)
  env = dict(os.environ, JAXREID_DEMO_SIZE=size, JAX_PLATFORMS='cpu')
  env.pop('JAXREID_DEMO_WORKDIR', None)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
  with tempfile.TemporaryDirectory() as tmp:
    client = NotebookClient(nb, kernel_name='python3', timeout=timeout,
                            resources={'metadata': {'path': tmp}})
    client.execute(env=env)
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if 'image/png' in output.get('data', {}):
        output.data['image/png'] = palette_png(output.data['image/png'])
  nbformat.validate(nb)
  nbformat.write(nb, path)
  print(f'{path}: executed at size {size!r}, {path.stat().st_size / 1e6:.2f} MB')


def main(argv):
  del argv
  execute(pathlib.Path(_NOTEBOOK.value), _SIZE.value, _TIMEOUT.value)


if __name__ == '__main__':
  app.run(main)
