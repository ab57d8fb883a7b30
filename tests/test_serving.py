"""Serving files: ONNX under onnxruntime and the deserialized JAX function equal FeatureExtractor."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxreid import configlib, main, serving
from jaxreid.reid import FeatureExtractor, export, model

common = configlib.load_sibling(
    str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'x.py'), 'common')

# Every backbone that build_model offers should be listed here.
ARCHS = ['tiny', 'resnet18', 'efficientnet_lite0']
HEIGHT, WIDTH = 64, 32

# Loads and runs a JAX serving file with jaxreid made impossible to import: plain jax is enough.
LOAD_WITHOUT_JAXREID = r'''
import importlib.abc, sys
class NoJaxreid(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'jaxreid':
      raise ImportError('jaxreid is not importable here')
sys.meta_path.insert(0, NoJaxreid())
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
assert exported.platforms == ('cpu', 'cuda'), exported.platforms  # one file for CPU and GPU
for path in sys.argv[2:]:
  np.save(path + '.out.npy', np.asarray(exported.call(np.load(path))))
assert not any(m.split('.')[0] == 'jaxreid' for m in sys.modules)
'''


def saved_model(tmp_path, arch, embedding_dim=16, seed=0):
  cfg = common.get_config()
  cfg.model.arch, cfg.model.embedding_dim = arch, embedding_dim
  cfg.data.height, cfg.data.width = HEIGHT, WIDTH
  cfg.eval.batch_size = 8
  net = model.build_model(cfg.model)
  variables = model.init_variables(net, jax.random.key(seed), HEIGHT, WIDTH)
  rng = np.random.default_rng(seed)
  # Non-trivial running statistics so that eval-mode BatchNorm matters.
  variables['batch_stats'] = jax.tree.map(
      lambda s: (rng.uniform(0.5, 2.0, s.shape) if s.ndim else s).astype(np.float32),
      variables['batch_stats'])
  return export.save_model(tmp_path / 'run' / 'best_model', variables, cfg), cfg


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(1).integers(0, 256, (7, HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize('arch', ARCHS)
def test_onnx_and_jax_files_equal_the_feature_extractor_for_batches_1_and_7(arch, images,
                                                                            tmp_path):
  ort = pytest.importorskip('onnxruntime')
  pytest.importorskip('jax2onnx')
  pytest.importorskip('flatbuffers')
  model_dir, cfg = saved_model(tmp_path, arch)
  want = FeatureExtractor(tmp_path / 'run')(images)
  batches = {1: images[:1], 7: images}

  onnx_path = tmp_path / 'reid.onnx'
  assert serving.export_model(tmp_path / 'run', 'onnx', onnx_path) == [onnx_path]
  options = ort.SessionOptions()
  options.intra_op_num_threads = 1
  session = ort.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
  assert [i.name for i in session.get_inputs()] == ['images']
  meta = session.get_modelmeta().custom_metadata_map
  assert json.loads(meta['mean']) == pytest.approx(list(cfg.data.mean))
  assert (meta['input_height'], meta['input_width']) == (str(HEIGHT), str(WIDTH))
  for n, batch in batches.items():
    got = session.run(['feature'], {'images': batch})[0]
    assert got.shape == (n, want.shape[1]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=2e-6)

  jax_path = tmp_path / 'reid.jax'
  written = serving.export_model(model_dir, 'jax', jax_path)
  assert json.loads(written[1].read_text())['feature_dim'] == str(want.shape[1])
  inputs = []
  for n, batch in batches.items():
    inputs.append(tmp_path / f'batch{n}.npy')
    np.save(inputs[-1], batch)
  subprocess.run([sys.executable, '-c', LOAD_WITHOUT_JAXREID, str(jax_path), *map(str, inputs)],
                 check=True, timeout=300)
  for (n, _), path in zip(batches.items(), inputs):
    got = np.load(str(path) + '.out.npy')
    assert got.shape == (n, want.shape[1]) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=2e-6)


def run_cli(monkeypatch, capsys, *args):
  """(exit code, stderr or exit message, stdout) of `jaxreid export ARGS`."""
  monkeypatch.setattr(sys, 'argv', ['jaxreid', 'export', *args])
  with pytest.raises(SystemExit) as e:
    main.run()
  out = capsys.readouterr()
  code = e.value.code
  if isinstance(code, str):
    return 1, code, out.out
  return code, out.err, out.out


def test_cli_writes_the_file_and_prints_its_path(monkeypatch, capsys, tmp_path):
  pytest.importorskip('flatbuffers')
  saved_model(tmp_path, 'tiny')
  code, err, out = run_cli(monkeypatch, capsys, f'--workdir={tmp_path / "run"}', '--format=jax',
                           f'--out={tmp_path / "f.jax"}')
  assert code == 0, err
  assert out.split() == [str(tmp_path / 'f.jax'), str(tmp_path / 'f.jax.json')]
  assert (tmp_path / 'f.jax').stat().st_size > 0


def test_cli_errors_are_one_line(monkeypatch, capsys, tmp_path):
  pytest.importorskip('jax2onnx')
  pytest.importorskip('flatbuffers')
  model_dir, _ = saved_model(tmp_path, 'tiny')
  (tmp_path / 'empty').mkdir()
  good = f'--workdir={model_dir}'
  out = f'--out={tmp_path / "x.onnx"}'
  for args, text in (
      ((f'--workdir={tmp_path / "empty"}', '--format=onnx', out), 'holds no trained model'),
      ((f'--workdir={tmp_path / "absent"}', '--format=jax', out), 'no such file or folder'),
      ((good, '--format=tflite', out), "--format='tflite': expected one of ('onnx', 'jax')"),
      ((good, '--format=onnx', f'--out={tmp_path / "no" / "x.onnx"}'), 'does not exist'),
      ((good, '--format=onnx', f'--out={tmp_path}'), 'is a folder; expected a file path'),
      ((good, '--format=jax', '--out=/proc/x.jax'), 'cannot write in /proc'),
  ):
    code, err, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and err.startswith('jaxreid export: ') and text in err, (args, err)
    assert '\n' not in err.strip(), err
  assert not (tmp_path / 'x.onnx').exists()


def test_weights_of_another_model_are_one_line(monkeypatch, capsys, tmp_path):
  """A reid_model.json that does not describe its weights is refused at load, not at first use."""
  model_dir, cfg = saved_model(tmp_path, 'tiny', embedding_dim=16)
  other, _ = saved_model(tmp_path / 'other', 'tiny', embedding_dim=32)
  (model_dir / export.VARIABLES_FILE).write_bytes((other / export.VARIABLES_FILE).read_bytes())
  with pytest.raises(export.ModelError) as e:
    FeatureExtractor(model_dir)
  message = str(e.value)
  assert 'params/embed/' in message and 'has shape (32' in message and 'expects (16' in message
  assert '\n' not in message
  resnet, _ = saved_model(tmp_path / 'resnet', 'resnet18')
  (model_dir / export.VARIABLES_FILE).write_bytes((resnet / export.VARIABLES_FILE).read_bytes())
  with pytest.raises(export.ModelError, match='belong to different models$'):
    FeatureExtractor(model_dir)
  if importlib.util.find_spec('flatbuffers') is not None:
    code, err, _ = run_cli(monkeypatch, capsys, f'--workdir={model_dir}', '--format=jax',
                           f'--out={tmp_path / "x.jax"}')
    assert code == 1 and 'belong to different models' in err and '\n' not in err.strip()


def test_missing_export_extra_is_one_line(monkeypatch, capsys, tmp_path):
  model_dir, _ = saved_model(tmp_path, 'tiny')
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'jax2onnx' else real(name, *a))
  code, err, _ = run_cli(monkeypatch, capsys, f'--workdir={model_dir}', '--format=onnx',
                         f'--out={tmp_path / "x.onnx"}')
  assert code == 1 and err.startswith('jaxreid export: jax2onnx')
  assert err.endswith('not installed; expected the export extra (pip install "jaxreid[export]")')
