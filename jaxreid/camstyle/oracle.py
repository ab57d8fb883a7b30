"""Perfect camera-style transfer on the synthetic data set: the upper bound for the StarGAN.

With `config.camstyle.oracle=True` no StarGAN is trained: every training image's fakes are the
synthetic generator's re-renders of it (same person, pose, view, framing and place) as each other
camera records it. The store is the same as the StarGAN's (store.py), so everything after it runs
unchanged. Comparing a run with and without it says how much of the method the StarGAN's fakes
leave on the table. Only the synthetic set can give it.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
from tqdm import tqdm

from jaxreid import parallel, support_sets
from jaxreid.camstyle import store as fake_store


def generate(config: ml_collections.ConfigDict, split, fakes_dir) -> dict:
  """Writes (or finishes) the fakes store of `split` with re-rendered images; returns a summary."""
  c, s = config.camstyle, config.synthetic
  num_cameras, camids = int(split.num_cameras), np.asarray(split.camids, np.int32)
  if num_cameras != s.num_cameras:
    raise ValueError(f'training split has {num_cameras} cameras, config.synthetic.num_cameras is '
                     f'{s.num_cameras}: expected the split the synthetic config wrote')
  names = list(split.file_names)
  fakes_dir = pathlib.Path(fakes_dir)
  writer = parallel.is_primary()
  chunks = fake_store.chunk_ranges(len(camids), c.chunk_size)
  if writer:
    fake_store.write_index(fakes_dir, camids, num_cameras, c.chunk_size, c.fake_format)
    todo = [k for k in range(len(chunks)) if not fake_store.chunk_path(fakes_dir, k).is_file()]
    from jaxreid.data import synthetic  # pylint: disable=import-outside-toplevel
    params = synthetic.params_of(s)
    for k in tqdm(todo, desc='oracle fakes', unit='chunk', disable=None):
      rows = chunks[k]
      targets = [support_sets.target_cameras_of(int(camids[i]), num_cameras) for i in rows]
      fakes = synthetic.render_in_cameras([names[i] for i in rows], targets, **params)
      encoded = [fake_store.encode(f, c.fake_format, c.jpeg_quality)
                 for per_image in fakes for f in per_image]
      fake_store.write_chunk(fake_store.chunk_path(fakes_dir, k), encoded)
  parallel.barrier('oracle_fakes_written')
  store = fake_store.FakeStore.open(fakes_dir)
  summary = {'oracle': True, 'num_images': len(camids),
             'num_fakes': len(camids) * (num_cameras - 1), 'store_bytes': store.nbytes()}
  store.close()
  return summary
