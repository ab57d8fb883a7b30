"""Feature extraction: `feature` of many images, jitted and sharded over the mesh batch by batch.

Host memory holds the output [n, d] and a few batches in flight, never the decoded data set.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import Mesh

from jaxreid import parallel
from jaxreid.data import augment, images as images_lib, pipeline
from jaxreid.reid import export, model as model_lib


@functools.partial(jax.jit, static_argnames=('net', 'mean', 'std', 'mesh'))
def _features(variables, batch, *, net: model_lib.ReidNet, mean: tuple, std: tuple, mesh: Mesh):
  """`feature` of a batch sharded on 'data' (variables replicated), left sharded on 'data'."""
  feats = net.apply(variables, augment.normalize(batch, mean, std), train=False)['feature']
  return jax.lax.with_sharding_constraint(feats, parallel.data_sharding(mesh))


@functools.partial(jax.jit, static_argnames=('valid', 'mesh'), donate_argnums=0)
def _write(out, feats, start, *, valid: int, mesh: Mesh):
  """out[start:start + valid] = feats[:valid] as float32, in place (out donated), replicated."""
  update = jax.lax.with_sharding_constraint(feats[:valid].astype(jnp.float32),
                                            parallel.replicated(mesh))
  return jax.lax.with_sharding_constraint(
      jax.lax.dynamic_update_slice_in_dim(out, update, start, axis=0), parallel.replicated(mesh))


@functools.partial(jax.jit, static_argnames=('shape', 'mesh'))
def _zeros(*, shape: tuple, mesh: Mesh):
  """A float32 buffer of `shape` made on the devices, replicated (no host array, no transfer)."""
  return jax.lax.with_sharding_constraint(jnp.zeros(shape, jnp.float32), parallel.replicated(mesh))


def extract_features(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
                     get_image: Callable[[Any], np.ndarray], indices: Sequence[Any], *,
                     mesh: Mesh, batch_size: int | None = None, height: int | None = None,
                     width: int | None = None, desc: str = 'features',
                     on_device: bool = False) -> np.ndarray | jax.Array:
  """float32 [len(indices), d]: `feature` of get_image(indices[k]), resized to height x width.

  Defaults: config.eval.batch_size, config.data.height / width. `variables` = {'params',
  'batch_stats'} (numpy or replicated arrays). Host path: results come back one batch late so
  the device never waits for the host. on_device=True: a jax.Array replicated on `mesh`, filled
  batch by batch on the devices, never fetched (the same values bit for bit).
  """
  batch_size = int(batch_size or config.eval.batch_size)
  height, width = int(height or config.data.height), int(width or config.data.width)
  net = model_lib.build_model(config.model)
  fn = functools.partial(_features, net=net, mean=tuple(config.data.mean),
                         std=tuple(config.data.std), mesh=mesh)
  variables = parallel.replicate({'params': variables['params'],
                                  'batch_stats': variables['batch_stats']}, mesh)
  out = None
  done = 0
  pending = None

  def write(feats, valid):
    nonlocal out, done
    if out is None:
      out = _zeros(shape=(len(indices), feats.shape[1]), mesh=mesh)
    out = _write(out, feats, np.int32(done), valid=valid, mesh=mesh)
    done += valid

  def collect(item):
    nonlocal out, done
    feats, valid = item
    host = parallel.to_host(feats)[:valid]
    if out is None:
      out = np.empty((len(indices), host.shape[1]), np.float32)
    out[done:done + valid] = host
    done += valid

  steps = -(-len(indices) // batch_size)
  batches = pipeline.eval_batches(get_image, indices, batch_size=batch_size, height=height,
                                  width=width, mesh=mesh, prefetch=config.data.prefetch,
                                  threads=config.data.decode_threads)
  for batch, valid in tqdm.tqdm(batches, total=steps, desc=desc, leave=False,
                                disable=not sys.stderr.isatty()):
    feats = fn(variables, batch)
    if on_device:
      write(feats, valid)   # asynchronous: nothing here waits for the device
      continue
    if pending is not None:
      collect(pending)
    pending = (feats, valid)
  if pending is not None:
    collect(pending)
  if out is None:
    dim = jax.eval_shape(lambda v: net.apply(v, np.zeros((1, height, width, 3), np.float32)),
                         variables)['feature'].shape[-1]
    out = _zeros(shape=(0, dim), mesh=mesh) if on_device else np.empty((0, dim), np.float32)
  return out


def extract_support_features(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
                             get_support: Callable[[int, int], np.ndarray], num_images: int,
                             support_size: int, *, mesh: Mesh, on_device: bool = False,
                             **kwargs) -> np.ndarray | jax.Array:
  """float32 [num_images, support_size, d]: slot 0 the real image, slots 1.. its fakes (a
  replicated jax.Array with on_device=True, see `extract_features`)."""
  items = [(i, s) for i in range(num_images) for s in range(support_size)]
  feats = extract_features(variables, config, lambda item: get_support(*item), items, mesh=mesh,
                           on_device=on_device, **kwargs)
  return feats.reshape(num_images, support_size, -1)


class FeatureExtractor:
  """Features of a trained model for a list of image paths or an array of images (torchreid-like).

    extractor = FeatureExtractor('runs/market')          # a work dir or a model dir
    feats = extractor(['a.jpg', 'b.jpg'])                 # float32 [2, d], L2-normalised
    feats = extractor(uint8_images)                       # [N, H, W, 3] (any H, W) or [H, W, 3]
  """

  def __init__(self, path: str | os.PathLike, *, batch_size: int | None = None,
               mesh: Mesh | None = None):
    self.variables, self.config = export.load_model(path)
    self.mesh = parallel.make_mesh() if mesh is None else mesh
    n = self.mesh.devices.size
    batch_size = int(batch_size or self.config.eval.batch_size)
    self.batch_size = max(n, batch_size // n * n)   # a multiple of the device count
    self.variables = parallel.replicate(self.variables, self.mesh)

  def __call__(self, inputs: Sequence[str | os.PathLike] | np.ndarray) -> np.ndarray:
    """float32 [N, d] features of N image paths or N uint8 images."""
    if isinstance(inputs, np.ndarray):
      array = inputs[None] if inputs.ndim == 3 else inputs
      if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f'images of dtype {inputs.dtype} and shape {inputs.shape}: expected '
                         'uint8 [N, H, W, 3] or [H, W, 3] RGB')
      get_image, indices = (lambda k: array[k]), range(len(array))
    else:
      paths = [pathlib.Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike))
                                         else inputs)]
      for p in paths:
        if not p.is_file():
          raise FileNotFoundError(f'{p}: no such image file')
      get_image, indices = (lambda k: images_lib.load_rgb(paths[k])), range(len(paths))
    return extract_features(self.variables, self.config, get_image, list(indices),
                            mesh=self.mesh, batch_size=self.batch_size)
