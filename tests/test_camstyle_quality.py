"""The fakes-quality measures tell perfect camera-style transfer from fakes that only copy the
camera (another person's image in the target camera) and from fakes that copy the source."""

import numpy as np
import pytest

from jaxreid.camstyle import quality
from jaxreid.data import synthetic

PARAMS = dict(num_cameras=3, num_train_ids=30, num_test_ids=2, images_per_id=6, height=64,
              width=32, seed=3)


@pytest.fixture(scope='module')
def reals_and_fakes():
  data = synthetic.generate(**PARAMS, progress=False)
  train = data.splits == 'train'
  names = [n for n, t in zip(synthetic._file_names(data.camids, data.pids - 1), train) if t]
  images, cams, pids = data.images[train], data.camids[train], data.pids[train]
  src = np.repeat(np.arange(len(images)), PARAMS['num_cameras'] - 1)
  tgt = np.array([k for c in cams for k in range(PARAMS['num_cameras']) if k != c])
  perfect = np.concatenate(synthetic.render_in_cameras(
      names, [[k for k in range(PARAMS['num_cameras']) if k != c] for c in cams], **PARAMS))
  rng = np.random.default_rng(0)
  # Camera-only fakes: a random other person's real image in the target camera.
  camera_only = np.stack([images[rng.choice(np.flatnonzero((cams == t) & (pids != pids[s])))]
                          for s, t in zip(src, tgt)])
  copies = images[src]
  return images, cams, pids, src, tgt, dict(perfect=perfect, camera_only=camera_only, copies=copies)


def _measure(reals_and_fakes, kind):
  images, cams, pids, src, tgt, fakes = reals_and_fakes
  return quality.measure(images, cams, pids, fakes[kind], src, tgt, 'colour', stargan_size=(64, 32))


def test_camera_measure_sees_the_target_camera_in_perfect_fakes_and_the_source_in_copies(
    reals_and_fakes):
  perfect, copies = _measure(reals_and_fakes, 'perfect'), _measure(reals_and_fakes, 'copies')
  assert perfect['camera_acc_real_held_out'] > 0.9   # synthetic cameras differ by colour
  assert perfect['fake_to_target_camera'] > 0.9
  assert copies['fake_to_source_camera'] > 0.9 and copies['fake_to_target_camera'] < 0.1


def test_identity_measure_ranks_perfect_fakes_above_camera_only_fakes(reals_and_fakes):
  perfect, camera_only = (_measure(reals_and_fakes, k) for k in ('perfect', 'camera_only'))
  # A camera-only fake shares the others' camera, not the source's: they are nearer to it.
  assert camera_only['fake_beats_others'] < 0.5
  assert perfect['fake_beats_others'] > camera_only['fake_beats_others'] + 0.2
  assert perfect['fake_nearest'] > 3 * camera_only['fake_nearest']
  # The reference pairs every image with each real image of its person in another camera.
  _, cams, pids, *_ = reals_and_fakes
  assert perfect['real_matches'] == sum(np.sum((pids == p) & (cams != c)) for p, c in zip(pids, cams))


def test_unknown_features_get_one_line(reals_and_fakes):
  images, cams, pids, src, tgt, fakes = reals_and_fakes
  with pytest.raises(quality.QualityError, match='expected one of'):
    quality.measure(images, cams, pids, fakes['copies'], src, tgt, 'sift', stargan_size=(64, 32))


def test_a_run_without_fakes_gets_one_line(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(quality.QualityError, match='no fakes store'):
    quality.measure_run(tmp_path)
