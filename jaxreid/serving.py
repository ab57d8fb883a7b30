"""Export a trained model for serving: ONNX (run by onnxruntime) or a serialized JAX function.

  jaxreid export --workdir=runs/market --format=onnx --out=reid.onnx
  jaxreid export --workdir=runs/market/best_model --format=jax --out=reid.jax

Both files hold the `feature` output of the kept model in eval mode, with the weights baked in:
  input   `images`  uint8 [batch, height, width, 3] RGB, batch free, height x width the run's
                    config.data.height / width (resize is the caller's: bilinear, as jaxreid does)
  output  `feature` float32 [batch, d], L2-normalised
The mean / std normalisation runs inside. The same facts are in the file's metadata (ONNX
metadata_props; for the JAX format, a `<out>.json` file beside it). Loading needs only onnxruntime,
or jax (`jax.export.deserialize(open(path, 'rb').read()).call(images)`): no jaxreid, no config.
Needs the `export` extra (`pip install jaxreid[export]`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jaxreid import atomic

FORMATS = ('onnx', 'jax')
# The JAX format is lowered for these platforms, so one file serves on CPU and on NVIDIA GPUs.
JAX_PLATFORMS = ('cpu', 'cuda')
INPUT_NAME, OUTPUT_NAME = 'images', 'feature'


class ExportError(ValueError):
  """An export cannot be made as asked; the message is one line saying what was expected."""


def feature_function(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
                     conv: str = 'native') -> Callable[[jax.Array], jax.Array]:
  """images uint8 [b, H, W, 3] -> float32 [b, d] `feature` of the model, weights as constants.

  `conv`: the convolution mode (see jaxreid.reid.fast_conv). 'native' by default: the slices +
  matmul form that config.model.conv may pick is an XLA:CPU speed-up, while an ONNX runtime picks
  its own convolution kernels.
  """
  from jaxreid.data import augment
  from jaxreid.reid import fast_conv, model as model_lib
  net = model_lib.build_model(config.model, conv=fast_conv.conv_module(conv))
  weights = jax.tree.map(jnp.asarray, {'params': variables['params'],
                                       'batch_stats': variables['batch_stats']})
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def features(images):
    return net.apply(weights, augment.normalize(images, mean, std), train=False)[OUTPUT_NAME]
  return features


def metadata(config: ml_collections.ConfigDict, feature_dim: int) -> dict[str, str]:
  """What a server needs to know about the exported function, as strings."""
  h, w = int(config.data.height), int(config.data.width)
  return {
      'producer': 'jaxreid',
      'arch': str(config.model.arch),
      'input': f'{INPUT_NAME}: uint8 [batch, {h}, {w}, 3] RGB (NHWC), resized by the caller '
               '(bilinear) to this size',
      'input_height': str(h), 'input_width': str(w),
      'normalization': 'inside: (images / 255 - mean) / std per RGB channel',
      'mean': json.dumps([float(v) for v in config.data.mean]),
      'std': json.dumps([float(v) for v in config.data.std]),
      'output': f'{OUTPUT_NAME}: float32 [batch, {feature_dim}], L2-normalised; compare by '
                'cosine similarity (dot product)',
      'feature_dim': str(feature_dim),
  }


def _feature_dim(fn, h: int, w: int) -> int:
  return int(jax.eval_shape(fn, jax.ShapeDtypeStruct((1, h, w, 3), jnp.uint8)).shape[-1])


def to_jax(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
           platforms: Sequence[str] = JAX_PLATFORMS) -> tuple[bytes, dict[str, str]]:
  """(serialized jax.export.Exported with a symbolic batch, metadata) of the model's feature.

  On CPU the file runs the convolutions as config.model.conv chooses them on CPU (as
  FeatureExtractor does: XLA:CPU's convolution is slow on small maps), elsewhere the native ones;
  XLA keeps only the caller's platform's branch.
  """
  fn = feature_function(variables, config)
  # 'auto' decides at trace time from the exporting machine's backend: exported on a CPU, the CPU
  # branch holds the matmul forms; exported on an accelerator, both branches are native.
  on_cpu = feature_function(variables, config, config.model.get('conv', 'auto'))
  h, w = int(config.data.height), int(config.data.width)
  batch, = jax.export.symbolic_shape('batch')

  def features(images):
    return jax.lax.platform_dependent(images, cpu=on_cpu, default=fn)
  exported = jax.export.export(jax.jit(features), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8))
  return bytes(exported.serialize()), metadata(config, _feature_dim(fn, h, w))


def to_onnx(variables: Mapping[str, Any], config: ml_collections.ConfigDict) -> bytes:
  """The serialized ONNX model of the feature (input `images`, output `feature`, batch free)."""
  fn = feature_function(variables, config)
  h, w = int(config.data.height), int(config.data.width)
  import jax2onnx
  with _quiet_plugin_loading(), _without_transpose_pair_pass():
    model = jax2onnx.to_onnx(fn, [jax.ShapeDtypeStruct(('batch', h, w, 3), jnp.uint8)],
                             model_name='jaxreid_feature', input_names=[INPUT_NAME],
                             output_names=[OUTPUT_NAME])
  for key, value in metadata(config, _feature_dim(fn, h, w)).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
  model.doc_string = ('jaxreid re-ID feature: uint8 RGB images in, L2-normalised features out; '
                      'see metadata_props')
  return model.SerializeToString()


class _quiet_plugin_loading:
  """jax2onnx loads all its plugins on first use and logs a traceback for each example plugin
  whose optional library (equinox, dm_pix) is absent; none of them is needed here."""

  def __enter__(self):
    import logging
    self.logger = logging.getLogger('jax2onnx.plugins.plugin_system')
    self.level = self.logger.level
    self.logger.setLevel(logging.ERROR)

  def __exit__(self, *exc):
    self.logger.setLevel(self.level)


class _without_transpose_pair_pass:
  """jax2onnx 0.17's `remove_redundant_transpose_pairs` graph pass drops a layout transpose on
  ResNet residual adds (ResNet-18: an Add of NCHW and NHWC tensors that onnxruntime rejects).
  The pass is left out while converting; onnxruntime's own optimizer removes the transposes."""

  PASS = 'remove_redundant_transpose_pairs'

  def __enter__(self):
    try:
      from jax2onnx.converter import ir_optimizations as opt
    except ImportError:
      self.module = None
      return self
    self.module, self.saved = opt, getattr(opt, '_OPTIMIZER_PASSES', None)
    if self.saved is not None:
      opt._OPTIMIZER_PASSES = tuple(p for p in self.saved if getattr(p, 'name', '') != self.PASS)
    return self

  def __exit__(self, *exc):
    if self.module is not None and self.saved is not None:
      self.module._OPTIMIZER_PASSES = self.saved


def _check_writable(out: pathlib.Path) -> None:
  """One line if `out` cannot be written, before any (slow) conversion."""
  if out.is_dir():
    raise ExportError(f'--out={out}: is a folder; expected a file path')
  parent = out.parent
  if not parent.is_dir():
    raise ExportError(f'--out={out}: folder {parent} does not exist; expected an existing folder')
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise ExportError(f'--out={out}: cannot write in {parent} ({e.strerror}); expected a '
                      'writable folder') from None


def _write(path: pathlib.Path, data: bytes) -> None:
  try:
    atomic.write_bytes(path, data)
  except OSError as e:
    raise ExportError(f'--out={path}: cannot write ({e.strerror})') from None


def export_model(path: str | os.PathLike, fmt: str, out: str | os.PathLike) -> list[pathlib.Path]:
  """Exports the model of a work dir or model dir as `fmt` to `out`; returns the files written."""
  from jaxreid.reid import export
  if fmt not in FORMATS:
    raise ExportError(f'--format={fmt!r}: expected one of {FORMATS}')
  out = pathlib.Path(out)
  _check_writable(out)
  _check_extra(*(('jax2onnx', 'onnx') if fmt == 'onnx' else ('flatbuffers',)))
  variables, config = export.load_model(path)
  if fmt == 'onnx':
    _write(out, to_onnx(variables, config))
    return [out]
  data, meta = to_jax(variables, config)
  side = out.with_name(out.name + '.json')
  _write(out, data)
  _write(side, json.dumps({**meta, 'load': 'jax.export.deserialize(bytes).call(images)'},
                          indent=2).encode())
  return [out, side]


def _check_extra(*modules: str) -> None:
  import importlib.util
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    raise ExportError(f'{", ".join(missing)} not installed; expected the export extra '
                      '(pip install "jaxreid[export]")')


def export_main(argv: Sequence[str]) -> int:
  """`jaxreid export --workdir=DIR --format=onnx|jax --out=PATH`; argv: the arguments after it."""
  parser = argparse.ArgumentParser(
      prog='jaxreid export',
      description='Write a trained model\'s feature function as ONNX or as serialized JAX.')
  parser.add_argument('--workdir', required=True, help='work dir (its best_model, else model) or '
                      'a model dir')
  parser.add_argument('--format', required=True, help='onnx (onnxruntime) or jax (jax.export)')
  parser.add_argument('--out', required=True, help='file to write')
  args = parser.parse_args(list(argv))
  from jaxreid.reid.export import ModelError
  try:
    written = export_model(args.workdir, args.format, args.out)
  except (ExportError, ModelError) as e:
    sys.exit(f'jaxreid export: {e}')
  for path in written:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(export_main(sys.argv[1:]))
