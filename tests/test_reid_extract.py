"""Feature extraction: order and padding kept on any mesh, support sets, the public extractor."""

import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from jaxreid import configlib, parallel
from jaxreid.data import augment
from jaxreid.reid import FeatureExtractor, export, extract_features, extract_support_features
from jaxreid.reid import extract, model

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


@pytest.fixture(scope='module')
def trained():
  cfg = common.get_config()
  cfg.model.arch, cfg.model.embedding_dim = 'tiny', 16
  cfg.data.height, cfg.data.width = 32, 16
  cfg.eval.batch_size = 8
  net = model.build_model(cfg.model)
  variables = model.init_variables(net, jax.random.key(0), 32, 16)
  rng = np.random.default_rng(0)
  # Non-trivial running statistics so that eval-mode BatchNorm matters.
  variables['batch_stats'] = jax.tree.map(
      lambda s: (rng.uniform(0.5, 2.0, s.shape) if s.ndim else s).astype(np.float32),
      variables['batch_stats'])
  images = rng.integers(0, 256, (13, 32, 16, 3), dtype=np.uint8)
  x = augment.normalize(images, cfg.data.mean, cfg.data.std)
  reference = np.asarray(jax.jit(net.apply)(variables, x)['feature'])
  return cfg, variables, images, reference


def test_features_in_order_with_padded_last_batch_on_one_and_eight_devices(trained):
  cfg, variables, images, reference = trained
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    got = extract_features(variables, cfg, lambda i: images[i], list(range(13)), mesh=mesh)
    assert got.shape == (13, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
  subset = extract_features(variables, cfg, lambda i: images[i], [5, 2], mesh=mesh)
  np.testing.assert_allclose(subset, reference[[5, 2]], rtol=1e-5, atol=1e-6)
  assert extract_features(variables, cfg, lambda i: images[i], [], mesh=mesh).shape == (0, 128)


def test_support_features_are_indexed_by_image_and_slot(trained):
  cfg, variables, images, reference = trained
  mesh = parallel.make_mesh()
  got = extract_support_features(variables, cfg, lambda i, s: images[3 * i + s], 4, 3, mesh=mesh)
  assert got.shape == (4, 3, 128)
  np.testing.assert_allclose(got.reshape(12, 128), reference[:12], rtol=1e-5, atol=1e-6)


def test_features_on_device_equal_the_host_ones_exactly(trained):
  cfg, variables, images, _ = trained
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    # 13 images in batches of 8: the padded last batch is cut on the device as on the host.
    for indices in (list(range(13)), [5, 2], []):
      want = extract_features(variables, cfg, lambda i: images[i], indices, mesh=mesh)
      got = extract_features(variables, cfg, lambda i: images[i], indices, mesh=mesh,
                             on_device=True)
      assert isinstance(got, jax.Array) and got.sharding.is_fully_replicated
      assert got.sharding.mesh == mesh and got.dtype == np.float32
      assert np.array_equal(np.asarray(got), want), (len(devices), indices)
  want = extract_support_features(variables, cfg, lambda i, s: images[3 * i + s], 4, 3, mesh=mesh)
  got = extract_support_features(variables, cfg, lambda i, s: images[3 * i + s], 4, 3, mesh=mesh,
                                 on_device=True)
  assert got.shape == (4, 3, 128) and got.sharding.is_fully_replicated
  assert np.array_equal(np.asarray(got), want)


def test_feature_extractor_from_a_work_dir_on_paths_and_arrays(trained, tmp_path):
  cfg, variables, images, reference = trained
  export.save_model(tmp_path / 'run' / 'model', variables, cfg)
  paths = []
  for i in range(3):
    paths.append(tmp_path / f'{i}.png')
    Image.fromarray(images[i]).save(paths[-1])
  extractor = FeatureExtractor(tmp_path / 'run')
  np.testing.assert_allclose(extractor([str(p) for p in paths]), reference[:3], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(extractor(images[:5]), reference[:5], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(extractor(images[7]), reference[7:8], rtol=1e-5, atol=1e-6)
  # Other sizes are resized to the model's input, as eval_batches does.
  big = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)
  want = np.stack([augment.resize(b, 32, 16) for b in big])
  np.testing.assert_allclose(extractor(big), extractor(want), rtol=1e-6)


def test_feature_extractor_compiles_once_for_repeated_calls(trained, tmp_path):
  cfg, variables, images, reference = trained
  assert model.build_model(cfg.model) == model.build_model(cfg.model)
  export.save_model(tmp_path / 'm', variables, cfg)
  extractor = FeatureExtractor(tmp_path / 'm')
  extractor(images[:3])
  before = extract._features._cache_size()
  np.testing.assert_allclose(extractor(images[3:6]), reference[3:6], rtol=1e-5, atol=1e-6)
  assert extract._features._cache_size() == before   # no new compilation


def test_feature_extractor_errors_are_one_line(trained, tmp_path):
  cfg, variables, _, _ = trained
  for call, kind, text in (
      (lambda: FeatureExtractor(tmp_path / 'absent'), export.ModelError, 'no such file or folder'),
      (lambda: FeatureExtractor(tmp_path), export.ModelError, 'holds no trained model'),
  ):
    with pytest.raises(kind) as e:
      call()
    assert text in str(e.value) and '\n' not in str(e.value)
  export.save_model(tmp_path / 'm', variables, cfg)
  extractor = FeatureExtractor(tmp_path / 'm')
  with pytest.raises(FileNotFoundError, match=r'nope.jpg: no such image file$'):
    extractor([tmp_path / 'nope.jpg'])
  with pytest.raises(ValueError, match=r'expected uint8 \[N, H, W, 3\]'):
    extractor(np.zeros((2, 32, 16, 3), np.float32))
