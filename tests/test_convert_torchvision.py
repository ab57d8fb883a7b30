"""torchvision ResNet checkpoints -> jaxreid backbone: same forward pass, one-line mismatches."""

import pathlib

import jax
import numpy as np
import pytest

from jaxreid import configlib
from jaxreid.reid import pretrained, resnet, train
from jaxreid.tools import convert_torchvision as cv

torch = pytest.importorskip('torch')
nn = torch.nn

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')


# ------------------------------------------------- torchvision's ResNet, written out (names matter)

class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TorchResNet(nn.Module):
  def __init__(self, block, layers, widths=(64, 128, 256, 512), stem=64):
    super().__init__()
    self.inplanes = stem
    self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, (n, w) in enumerate(zip(layers, widths)):
      setattr(self, f'layer{i + 1}', self._make_layer(block, w, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(widths[-1] * block.expansion, 1000)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return torch.flatten(self.avgpool(x), 1)


def torch_resnet(arch, seed=0):
  torch.manual_seed(seed)
  net = {'resnet18': lambda: TorchResNet(BasicBlock, [2, 2, 2, 2]),
         'resnet50': lambda: TorchResNet(Bottleneck, [3, 4, 6, 3])}[arch]()
  with torch.no_grad():   # non-trivial BN so that every mapped entry matters
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


def state_dict_np(net):
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def forward_both(arch, variables, net):
  x = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = net.features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = jax.jit(resnet.ResNet(arch).apply)(variables, x)
  return np.asarray(got), want


def test_resnet18_checkpoint_file_to_init_checkpoint_gives_same_forward(tmp_path, capsys):
  net = torch_resnet('resnet18')
  torch.save(net.state_dict(), tmp_path / 'r18.pth')
  assert cv.main([str(tmp_path / 'r18.pth'), str(tmp_path / 'r18.msgpack')]) == 0
  assert 'resnet18' in capsys.readouterr().out
  cfg = common.get_config()
  cfg.model.arch, cfg.model.init_checkpoint = 'resnet18', str(tmp_path / 'r18.msgpack')
  cfg.data.height, cfg.data.width = 64, 32
  variables = train.init_variables(cfg, jax.random.key(0))   # the path a run takes
  backbone = {'params': variables['params']['backbone'],
              'batch_stats': variables['batch_stats']['backbone']}
  got, want = forward_both('resnet18', backbone, net)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).max() > 0.1


def test_resnet50_bottlenecks_convert_to_same_forward():
  net = torch_resnet('resnet50', seed=1)
  sd = state_dict_np(net)
  assert cv.detect_arch(sd) == 'resnet50'
  got, want = forward_both('resnet50', cv.convert_state_dict(sd), net)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def one_line_error(fn, *args):
  with pytest.raises((ValueError, OSError)) as e:
    fn(*args)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


def test_mismatching_state_dicts_name_the_first_mismatch():
  sd = state_dict_np(torch_resnet('resnet18'))
  bad = dict(sd)
  bad['layer2.1.conv1.weight'] = np.zeros((128, 64, 3, 3), np.float32)
  assert one_line_error(cv.convert_state_dict, bad) == (
      "key 'layer2.1.conv1.weight' has shape (128, 64, 3, 3), expected (128, 128, 3, 3) "
      'for resnet18')
  missing = {k: v for k, v in sd.items() if k != 'layer3.0.downsample.1.running_var'}
  assert one_line_error(cv.convert_state_dict, missing) == (
      "missing key 'layer3.0.downsample.1.running_var' for resnet18")
  extra = dict(sd, **{'layer1.0.se.weight': np.zeros(3, np.float32)})
  assert "unexpected key 'layer1.0.se.weight'" in one_line_error(cv.convert_state_dict, extra)
  assert 'not a torchvision ResNet-18/34/50 state dict' in one_line_error(
      cv.convert_state_dict, {'features.0.weight': np.zeros((8, 3, 3, 3))})


def test_checkpoint_of_another_arch_is_refused_in_one_line(tmp_path):
  import flax.serialization
  sd = state_dict_np(torch_resnet('resnet18'))
  path = tmp_path / 'r18.msgpack'
  path.write_bytes(flax.serialization.msgpack_serialize(cv.convert_state_dict(sd)))
  cfg = common.get_config()
  cfg.model.arch, cfg.model.init_checkpoint = 'resnet34', str(path)
  cfg.data.height, cfg.data.width = 64, 32
  msg = one_line_error(train.init_variables, cfg, jax.random.key(0))
  assert msg.startswith(f"{path} does not fit config.model.arch='resnet34': missing entry "
                        "'params/layer1_2/bn1/bias'"), msg
  missing_file = one_line_error(pretrained.read_backbone, tmp_path / 'nope.msgpack')
  assert 'no such file' in missing_file


def test_cli_reports_missing_file_in_one_line(tmp_path, capsys):
  assert cv.main([str(tmp_path / 'nope.pth'), str(tmp_path / 'out.msgpack')]) == 1
  err = capsys.readouterr().err.strip()
  assert err == (f'convert_torchvision: {tmp_path / "nope.pth"}: no such file; expected a '
                 'torchvision .pth checkpoint')
