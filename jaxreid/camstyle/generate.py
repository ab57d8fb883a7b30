"""Writes every training image's L - 1 camera-style fakes into a store (see store.py).

Resumable by chunk: a chunk file appears only complete, and a restarted generation skips the
chunks already on disk. The generator sees each image resized to the StarGAN's size; the fake is
resized back to the source image's size before encoding, so the store stays near the originals'
size times L - 1.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from jaxreid import parallel, support_sets
from jaxreid.camstyle import store as fake_store
from jaxreid.camstyle import train as camstyle_train
from jaxreid.data import augment


def _pairs(camids: np.ndarray, indices: range, num_cameras: int) -> tuple[np.ndarray, np.ndarray]:
  """(image, target camera) for every fake of `indices`, in store record order."""
  src, tgt = [], []
  for i in indices:
    for k in support_sets.target_cameras_of(int(camids[i]), num_cameras):
      src.append(i)
      tgt.append(k)
  return np.asarray(src, np.int64), np.asarray(tgt, np.int32)


def _batch_size(c, mesh) -> int:
  n = mesh.devices.size
  return max(n, (c.generate_batch_size + n - 1) // n * n)


def translate_pairs(translate, g_params, get_image, src: np.ndarray, tgt: np.ndarray, c,
                    mesh) -> list[np.ndarray]:
  """The fakes for (src[j], tgt[j]), each at its source image's size (uint8 HxWx3)."""
  bs = _batch_size(c, mesh)
  rows = parallel.host_slice(bs, mesh)
  cache: dict[int, np.ndarray] = {}

  def image(i):
    if i not in cache:
      cache[i] = np.asarray(get_image(int(i)))
    return cache[i]

  out = []
  for s in range(0, len(src), bs):
    b_src, b_tgt = src[s:s + bs], tgt[s:s + bs]
    n = len(b_src)
    pad_src = np.concatenate([b_src, np.repeat(b_src[:1], bs - n)])
    pad_tgt = np.concatenate([b_tgt, np.zeros(bs - n, np.int32)])
    local = np.stack([augment.resize(image(i), c.height, c.width) for i in pad_src[rows]])
    fakes = parallel.to_host(translate(g_params, *parallel.shard_batch((local, pad_tgt[rows]), mesh)))
    for j in range(n):
      h, w = image(b_src[j]).shape[:2]
      out.append(augment.resize(fakes[j], h, w))
  return out


def _hhl_name(file_name: str, target_cam: int) -> str:
  return f'{pathlib.Path(file_name).stem}_fake_{target_cam + 1}.jpg'


def generate(config: ml_collections.ConfigDict, split, camstyle_dir, fakes_dir, mesh) -> dict:
  """Writes (or finishes) the fakes store for `split` in `fakes_dir` with the generator trained
  in `camstyle_dir`; returns a summary (counts, bytes, seconds are added by the caller)."""
  c = config.camstyle
  num_cameras, camids = int(split.num_cameras), np.asarray(split.camids, np.int32)
  camstyle_train.check_config(c, num_cameras, len(camids))
  fakes_dir = pathlib.Path(fakes_dir)
  writer = jax.process_index() == 0
  if writer:
    fake_store.write_index(fakes_dir, camids, num_cameras, c.chunk_size, c.fake_format)
  # Every process must agree on the chunks still to do (each translation is a collective).
  parallel.barrier('fakes_index')
  g_params = camstyle_train.load_generator(config, num_cameras, camstyle_dir, mesh)
  translate = camstyle_train.make_translate(config, num_cameras, mesh)
  chunks = fake_store.chunk_ranges(len(camids), c.chunk_size)
  todo = [k for k in range(len(chunks)) if not fake_store.chunk_path(fakes_dir, k).is_file()]
  file_names = list(getattr(split, 'file_names', None) or [])
  if c.write_hhl_folder and len(file_names) != len(camids):
    raise ValueError('config.camstyle.write_hhl_folder needs the split\'s file_names (one per '
                     'image)')
  bar = tqdm(total=len(camids), initial=len(camids) - sum(len(chunks[k]) for k in todo),
             desc='camstyle fakes', unit='img', disable=not sys.stderr.isatty(), dynamic_ncols=True)
  written_rows, written_bytes = [], 0
  try:
    for k in todo:
      src, tgt = _pairs(camids, chunks[k], num_cameras)
      fakes = translate_pairs(translate, g_params, split.image, src, tgt, c, mesh)
      if writer:
        if c.write_hhl_folder:
          hhl = fakes_dir / 'hhl'
          hhl.mkdir(parents=True, exist_ok=True)
          for i, t, f in zip(src, tgt, fakes):
            Image.fromarray(f).save(hhl / _hhl_name(file_names[i], t), format='JPEG',
                                    quality=int(c.jpeg_quality))
        encoded = [fake_store.encode(f, c.fake_format, c.jpeg_quality) for f in fakes]
        # Written last: its presence marks the chunk (and its HHL files) done.
        fake_store.write_chunk(fake_store.chunk_path(fakes_dir, k), encoded)
        written_rows.extend(chunks[k])
        written_bytes += sum(len(e) for e in encoded)
      bar.update(len(chunks[k]))
  finally:
    bar.close()
  parallel.barrier('fakes_written')
  store = fake_store.FakeStore.open(fakes_dir)
  summary = {'num_images': len(camids), 'num_fakes': len(camids) * (num_cameras - 1),
             'store_bytes': store.nbytes(), 'chunks_written': len(todo)}
  if hasattr(split, 'image_bytes') and written_rows:
    # The fakes' size budget: about 1.5x the originals' size times L - 1. Measured on the encoded
    # fakes this run wrote, which jpeg_quality sets; array_record's framing (up to ~128 KiB a
    # chunk file, whatever its images) is not theirs.
    original = sum(len(split.image_bytes(i)) for i in written_rows)
    summary['size_ratio'] = written_bytes / max(1, original * (num_cameras - 1))
    if summary['size_ratio'] > 1.5:
      logging.warning('the fakes written are %.2fx the originals\' size times L - 1 (budget '
                      '1.5x); lower config.camstyle.jpeg_quality=%d', summary['size_ratio'],
                      c.jpeg_quality)
  if writer:
    from jaxreid import viz
    summary['figure'] = str(viz.draw_camstyle(config, split, store, pathlib.Path(camstyle_dir)))
  store.close()
  return summary
