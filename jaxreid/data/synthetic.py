"""A procedurally generated multi-camera re-ID data set: the stand-in for Market-1501.

Identities are people-ish figures with structured clothing (torso colour and pattern, sleeves,
trousers / shorts / skirt, shoes, hair, hat, bag, build); each image jitters pose, view (front /
back), scale, crop and adds occluders. Each camera has a strong style of its own (colour cast,
saturation, brightness, contrast, gamma, illumination gradient, blur, noise, and by default a scene
background of its own; `shared_scene=True` has every camera overlook one scene), so that camera is
the main nuisance: on raw pixels a same-camera impostor is usually nearer than a cross-camera true
match, as in Market-1501. Everything follows from one seed.

`generate` returns the images in memory; `write_market_folder` writes them as a Market-1501 folder
(bounding_box_train / query / bounding_box_test) that the ordinary folder reader turns into TFDS;
`render_in_cameras` re-renders named images as other cameras would record them (perfect style
transfer, config.camstyle.oracle).
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image
import tqdm

from jaxreid import atomic

# Bump when the images a given set of parameters produces change, so old folders are not reused.
VERSION = 2
FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
META_FILE = 'synthetic.json'
JPEG_QUALITY = 95
MAX_CAMERAS_PER_ID = 4
_CHUNK = 32           # images rendered at once; fixed, so noise streams do not depend on it
_PARAM_NAMES = ('num_cameras', 'num_train_ids', 'num_test_ids', 'images_per_id', 'height',
                'width', 'seed')
_FLAG_NAMES = ('shared_scene',)   # booleans; absent from folders written before they existed


class SyntheticSet(NamedTuple):
  """The generated images with their labels, in file order (train ids first)."""
  images: np.ndarray   # uint8 [N, H, W, 3]
  pids: np.ndarray     # int32 [N], 1-based; test identities are numbered after the train ones
  camids: np.ndarray   # int32 [N], 0-based camera
  splits: np.ndarray   # str [N]: 'train' | 'query' | 'gallery'


# ------------------------------------------------------------------------------------- parameters

def _check_params(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
                  shared_scene=False):
  def fail(name, value, expected):
    raise ValueError(f'synthetic data set: {name}={value!r}: expected {expected}')
  if not isinstance(shared_scene, (bool, np.bool_)):
    fail('shared_scene', shared_scene, 'True or False')
  for name, value in zip(_PARAM_NAMES, (num_cameras, num_train_ids, num_test_ids, images_per_id,
                                        height, width, seed)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      fail(name, value, 'an integer')
  if not 2 <= num_cameras <= 9:
    fail('num_cameras', num_cameras, '2..9 (each identity needs two cameras; Market file names '
         'hold a one-digit camera)')
  if num_train_ids < 1 or num_test_ids < 1:
    fail('num_train_ids/num_test_ids', (num_train_ids, num_test_ids), 'at least 1 each')
  if num_train_ids + num_test_ids > 9999:
    fail('num_train_ids+num_test_ids', num_train_ids + num_test_ids,
         'at most 9999 (Market file names hold a 4-digit identity)')
  if images_per_id < 4:
    fail('images_per_id', images_per_id, 'at least 4 (two cameras with one query and one gallery '
         'image each)')
  if height < 32 or width < 16:
    fail('height x width', (height, width), 'at least 32 x 16 pixels')
  if seed < 0:
    fail('seed', seed, 'a non-negative integer')


def _rng(seed: int, *stream: int) -> np.random.Generator:
  """An independent random stream per purpose, so adding draws to one leaves the others alone."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _hsv_to_rgb(h, s, v):
  """Vectorised HSV -> RGB (all in [0, 1]); the last axis of the result is RGB."""
  i = np.floor(h * 6.0).astype(np.int64) % 6
  f = h * 6.0 - np.floor(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  table = np.stack([np.stack(c, -1) for c in
                    ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)
  return np.take_along_axis(table, i[None, ..., None], 0)[0]


def _clothing_colours(rng, n):
  """Colours as people wear them: many blacks / greys / whites, the rest any hue."""
  grey = rng.random(n) < 0.35
  h = rng.random(n)
  s = np.where(grey, rng.uniform(0.0, 0.08, n), rng.uniform(0.35, 0.95, n))
  v = np.where(grey, rng.uniform(0.08, 0.95, n), rng.uniform(0.25, 0.95, n))
  return _hsv_to_rgb(h, s, v)


def _contrasting(rng, base, n):
  """Second colours that stay visible on `base` (patterns must not vanish into the ground)."""
  other = _clothing_colours(rng, n)
  close = np.linalg.norm(other - base, axis=-1) < 0.45
  light = base.mean(-1, keepdims=True) > 0.5
  pushed = np.where(light, other * 0.3, 0.55 + 0.45 * other)
  return np.where(close[:, None], pushed, other)


def _identities(rng, n):
  """Per-identity appearance; train and test identities come from this one distribution."""
  skin = _hsv_to_rgb(rng.uniform(0.03, 0.10, n), rng.uniform(0.25, 0.6, n),
                     rng.uniform(0.3, 0.95, n))
  hair = _hsv_to_rgb(rng.uniform(0.02, 0.12, n), rng.uniform(0.2, 0.7, n),
                     rng.choice([0.08, 0.15, 0.3, 0.55, 0.8], n) * rng.uniform(0.8, 1.1, n))
  torso = _clothing_colours(rng, n)
  legs = _clothing_colours(rng, n)
  # Trousers are mostly dark or blue, as in street scenes.
  jeans = rng.random(n) < 0.3
  k = jeans.sum()
  legs[jeans] = _hsv_to_rgb(rng.uniform(0.58, 0.64, k), rng.uniform(0.3, 0.7, k),
                            rng.uniform(0.2, 0.6, k))
  return dict(
      skin=skin, hair=hair, torso=torso, torso2=_contrasting(rng, torso, n), legs=legs,
      shoes=_clothing_colours(rng, n) * 0.7, bag=_clothing_colours(rng, n),
      hat=_clothing_colours(rng, n),
      # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 open jacket, 5 print,
      # 6 two-tone (top / bottom).
      pattern=rng.integers(0, 7, n), stripe_freq=rng.uniform(14.0, 30.0, n),
      long_sleeves=rng.random(n) < 0.6,
      legwear=rng.choice(3, n, p=[0.6, 0.25, 0.15]),     # trousers | shorts | skirt
      long_hair=rng.random(n) < 0.35, hat_on=rng.random(n) < 0.15,
      bag_type=rng.choice(4, n, p=[0.4, 0.25, 0.2, 0.15]),  # none | backpack | shoulder | hand
      bag_side=rng.choice([-1.0, 1.0], n),
      build=rng.uniform(0.85, 1.2, n), stature=rng.uniform(0.92, 1.04, n))


def _camera_assignment(rng, num_ids, num_cameras, images_per_id):
  """Cameras of each identity's images: 2..4 cameras per identity, at least two images in each."""
  kmax = min(MAX_CAMERAS_PER_ID, num_cameras, images_per_id // 2)
  cams = np.empty((num_ids, images_per_id), np.int32)
  for i in range(num_ids):
    chosen = rng.permutation(num_cameras)[:rng.integers(2, kmax + 1)]
    rest = rng.choice(chosen, images_per_id - 2 * len(chosen))
    cams[i] = np.sort(np.concatenate([chosen, chosen, rest]))
  return cams


def _camera_styles(rng, num_cameras):
  """One strong, distinct style per camera: every attribute takes spread-out values across them."""
  c = num_cameras

  def spread(lo, hi):
    return rng.permutation(np.linspace(lo, hi, c)) + rng.uniform(-0.2, 0.2, c) * (hi - lo) / c

  hue = (np.arange(c) / c + rng.uniform(0, 1) + rng.uniform(-0.04, 0.04, c)) % 1.0
  tint = _hsv_to_rgb(hue, np.ones(c), np.ones(c))
  strength = spread(0.05, 0.18)
  gains = 1.0 + 2.0 * strength[:, None] * (tint - tint.mean(-1, keepdims=True))
  light_angle = rng.uniform(0, 2 * np.pi, c)
  return dict(
      gains=gains, saturation=spread(0.7, 1.15), contrast=spread(0.75, 1.15),
      brightness=spread(0.8, 1.15), gamma=spread(0.85, 1.2),
      light=np.stack([np.cos(light_angle), np.sin(light_angle)], -1) * spread(0.0, 0.25)[:, None],
      blur=np.clip(spread(0.0, 1.2), 0.0, None), noise=np.clip(spread(0.004, 0.03), 0.0, None))


def _scene(rng, cam, num_cameras, height, width):
  """The fixed background seen by one camera: wall + floor with their own textures and objects."""
  sh, sw = height * 3 // 2, width * 2
  y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
  hue = (cam / num_cameras + rng.uniform(-0.05, 0.05)) % 1.0
  wall = _hsv_to_rgb(*np.array([hue, rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.9)]))
  floor = _hsv_to_rgb(*np.array([(hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.05, 0.4),
                                 rng.uniform(0.25, 0.75)]))
  scale = height / 128.0   # texture periods follow the image size
  kind = (cam + rng.integers(0, 5)) % 5
  period = rng.uniform(6, 16) * scale
  if kind == 0:      # panels
    shade = 1 + 0.18 * np.sign(np.sin(2 * np.pi * x / period))
  elif kind == 1:    # bricks
    row = np.floor(y / (period * 0.6))
    shade = 1 - 0.3 * ((y % (period * 0.6) < 1.2 * scale) |
                       ((x + (row % 2) * period) % (2 * period) < 1.2 * scale))
  elif kind == 2:    # blotches
    coarse = rng.uniform(-0.3, 0.3, (sh // 8 + 2, sw // 8 + 2))
    shade = 1 + np.asarray(Image.fromarray(coarse.astype(np.float32)).resize(
        (sw, sh), Image.BILINEAR))
  elif kind == 3:    # windows
    shade = 1 + 0.35 * ((x % (2 * period) < period) & (y % (1.5 * period) < period))
  else:              # horizontal bands
    shade = 1 + 0.2 * np.sin(2 * np.pi * y / (1.7 * period) + rng.uniform(0, 6))
  horizon = sh * rng.uniform(0.35, 0.6)
  tile = rng.uniform(8, 20) * scale
  grid = ((x % tile) < 1.2 * scale) | ((y % tile) < 1.2 * scale)
  floor_shade = 1 - 0.25 * rng.integers(0, 2) * grid     # tiled or plain floor
  img = np.where((y < horizon)[..., None], wall * shade[..., None], floor * floor_shade[..., None])
  for _ in range(rng.integers(2, 5)):   # benches, doors, posters
    oh, ow = rng.uniform(0.1, 0.4) * sh, rng.uniform(0.1, 0.35) * sw
    oy, ox = rng.uniform(0, sh - oh), rng.uniform(0, sw - ow)
    colour = _clothing_colours(rng, 1)[0]
    inside = (y >= oy) & (y < oy + oh) & (x >= ox) & (x < ox + ow)
    img = np.where(inside[..., None], colour, img)
  return np.clip(img, 0, 1).astype(np.float32)


def _image_params(rng, track, height, width, scene_shape):
  """Per-image nuisance: view, pose, scale, crop, occluder, background offset, exposure.

  Images of one identity in one camera form a tracklet (as detections in Market-1501 do): they
  share the view, the place in the scene and the framing, and differ by the walking phase, a
  drift, the crop and occluders.
  """
  n, t = len(track), track.max() + 1
  sy, sx = scene_shape[0] - height, scene_shape[1] - width
  drift = max(1, height // 20)
  crop = rng.random(n) < 0.15             # a loose detector box: the figure is cut at an edge
  phase = rng.uniform(0, 2 * np.pi, n)
  return dict(
      back=(rng.random(t) < 0.5)[track] ^ (rng.random(n) < 0.1),
      scale=(rng.uniform(0.8, 0.95, t)[track] * rng.uniform(0.95, 1.05, n) *
             np.where(crop, rng.uniform(1.1, 1.3, n), 1.0)),
      top_frac=np.where(crop, rng.uniform(-0.3, 1.3, n), rng.uniform(0.25, 0.75, n)),
      dx=(rng.normal(0, 0.05, t)[track] + rng.normal(0, 0.02, n) +
          np.where(crop, rng.uniform(-0.2, 0.2, n), 0)) * width,
      arm_swing=0.18 * np.sin(phase), stride=0.15 * np.abs(np.sin(phase)),
      occluder=np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0),  # none|pole|low|side
      occ_pos=rng.random(n), occ_size=rng.random(n), occ_colour=_clothing_colours(rng, n),
      bg_y=np.clip(rng.integers(0, sy + 1, t)[track] + rng.integers(-drift, drift + 1, n), 0, sy),
      bg_x=np.clip(rng.integers(0, sx + 1, t)[track] + rng.integers(-drift, drift + 1, n), 0, sx),
      exposure=rng.uniform(0.93, 1.07, n))


# ------------------------------------------------------------------------------------- rendering

def _coverage(sd, ph):
  """Signed distance in body units (< 0 inside) -> anti-aliased coverage in [0, 1]."""
  return np.clip(0.5 - sd * ph, 0.0, 1.0)


def _ellipse(u, v, cu, cv, ru, rv):
  r = np.minimum(ru, rv).astype(np.float32)   # float64 scalars would promote the whole image
  return (np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1.0) * r


def _box(u, v, cu, cv, hu, hv):
  return np.maximum(np.abs(u - cu) - hu, np.abs(v - cv) - hv)


def _capsule(u, v, u0, v0, u1, v1, r):
  """Distance to a thick segment, and the position along it (0 at the start, 1 at the end)."""
  du, dv = u1 - u0, v1 - v0
  t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
  pu, pv = u - u0 - t * du, v - v0 - t * dv
  return np.sqrt(pu * pu + pv * pv) - r, t    # np.hypot is several times slower


def _composite(layers, shape):
  """Back-to-front layers -> figure (rgb [n,3,H,W], alpha [n,H,W]).

  A layer is (rows, coverage [n,R,W], colour [n,3], second colour [n,3] or None, its share
  [n,R,W]) and only touches its band of rows. Layers are visited front to back, tracking how much
  light still passes, so each one costs a few single-channel operations on its band.
  """
  transmit = np.ones(shape, np.float32)
  rgb = np.zeros((shape[0], 3) + shape[1:], np.float32)
  for rows, cover, colour, colour2, share2 in reversed(layers):
    t = transmit[:, rows]
    weight = cover * t
    t -= weight
    if colour2 is None:
      parts = ((weight, colour),)
    else:
      weight2 = weight * share2
      parts = ((weight - weight2, colour), (weight2, colour2))
    for c in range(3):
      plane = rgb[:, c, rows]
      for w, col in parts:
        plane += w * col[:, c, None, None]
  return rgb, 1.0 - transmit


def _torso_pattern(u, v, e, back):
  """0/1 map of the torso's second colour; prints and open jackets only show from the front."""
  f = e['stripe_freq']
  hs = np.sin(2 * np.pi * (v - 0.14) * f) > 0
  vs = np.sin(2 * np.pi * u * f) > 0
  patterns = {1: hs, 2: vs, 3: hs ^ vs,
              4: (np.abs(u) < 0.03 * e['build']) & ~back,
              5: (_box(u, v, 0.0, 0.29, 0.045, 0.045) < 0) & ~back,
              6: v > 0.37}
  out = np.zeros(u.shape, bool)
  for k, m in patterns.items():
    if np.any(e['pattern'] == k):
      out |= m & (e['pattern'] == k)
  return out.astype(np.float32)


def _render_people(idn, img, height, width):
  """Figures on a transparent layer: (rgb [n,3,H,W], alpha [n,H,W], ground shadow [n,H,W])."""
  n = len(img['scale'])
  ph = (height * img['scale'] * idn['stature'])[:, None, None]
  top = (height - ph) * img['top_frac'][:, None, None]
  cx = width / 2 + img['dx'][:, None, None]
  ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
  xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
  # Body units: the figure is 1 tall, head top at v = 0, feet at v = 1, centre line at u = 0.
  u = np.broadcast_to((xs - cx) / ph, (n, height, width))
  v = np.broadcast_to((ys - top) / ph, (n, height, width))
  e = {k: (val[:, None, None] if val.ndim == 1 else val) for k, val in idn.items()}
  back = img['back'][:, None, None]
  b, bag = e['build'], idn['bag_type']
  skin, legs, torso, hair = idn['skin'], idn['legs'], idn['torso'], idn['hair']
  layers = []   # painted back to front

  def band(v0, v1):
    """The image rows where body heights v0..v1 fall in any image of the chunk."""
    lo = int(np.clip(np.floor((top + v0 * ph).min()) - 1, 0, height))
    hi = int(np.clip(np.ceil((top + v1 * ph).max()) + 1, 0, height))
    return slice(lo, max(lo, hi))

  def paint(v0, v1, shape, colour, colour2=None, where=None):
    """Adds a layer that lies within body heights v0..v1; `shape(u, v)` -> sd or (sd, share)."""
    rows = band(v0, v1)
    if rows.start == rows.stop or (where is not None and not where.any()):
      return
    out = shape(u[:, rows], v[:, rows])
    sd, share = out if colour2 is not None else (out, None)
    cover = _coverage(sd, ph)
    if where is not None:
      cover *= where[:, None, None]
    layers.append((rows, cover, colour, colour2, share))

  # Legs swing apart by the stride; shorts and skirts show skin below.
  stride = img['stride'][:, None, None]
  for side in (-1.0, 1.0):
    hip = side * 0.05 * b
    foot_u, foot_v = hip + 0.44 * np.sin(side * (0.02 + stride)), 0.5 + 0.44 * np.cos(0.02 + stride)
    def leg(u, v, hip=hip, foot_u=foot_u, foot_v=foot_v):
      sd, _ = _capsule(u, v, hip, 0.5, foot_u, foot_v, 0.04 * b)
      bare = (e['legwear'] == 2) | ((e['legwear'] == 1) & (v > 0.66))
      return sd, bare.astype(np.float32)
    paint(0.45, 1.0, leg, legs, skin)
    paint(0.88, 1.03, lambda u, v, fu=foot_u + side * 0.01, fv=foot_v + 0.02:
          _ellipse(u, v, fu, fv, 0.045, 0.022), idn['shoes'])
  paint(0.47, 0.57, lambda u, v: _box(u, v, 0.0, 0.52, 0.09 * b, 0.04), legs)

  def skirt(u, v):
    half = (0.1 + 0.1 * np.clip(v - 0.48, 0, None)) * b
    return np.maximum(np.abs(u) - half, np.abs(v - 0.6) - 0.12)
  paint(0.47, 0.73, skirt, legs, where=idn['legwear'] == 2)

  # Long hair hangs behind the neck and torso when seen from the front, over the back otherwise.
  long_hair = lambda u, v: _box(u, v, 0.0, 0.14, 0.05, 0.08)
  paint(0.05, 0.23, long_hair, hair, where=idn['long_hair'] & ~img['back'])

  # Neck, then the torso with its pattern.
  paint(0.09, 0.17, lambda u, v: _box(u, v, 0.0, 0.13, 0.022, 0.03), skin)

  def body(u, v):
    half = (0.115 - 0.05 * np.clip(v - 0.14, 0, None)) * b
    return (np.maximum(np.abs(u) - half, np.abs(v - 0.33) - 0.19),
            _torso_pattern(u, v, e, back))
  paint(0.13, 0.53, body, torso, idn['torso2'])

  # Bags: backpack (its body from behind, straps from the front), shoulder bag with its strap.
  bag_side = e['bag_side'] * np.where(back, np.float32(-1), np.float32(1))  # mirrored from behind
  paint(0.14, 0.45, lambda u, v: np.where(back, _box(u, v, 0.0, 0.31, 0.085 * b, 0.13),
                                          _box(np.abs(u), v, 0.06 * b, 0.27, 0.012, 0.12)),
        idn['bag'], where=bag == 1)
  paint(0.15, 0.46, lambda u, v: _capsule(u, v, -bag_side * 0.09 * b, 0.16,
                                          bag_side * 0.15 * b, 0.44, 0.008)[0],
        idn['bag'], where=bag == 2)

  # Arms swing opposite to each other; short sleeves show skin on the forearm.
  swing = img['arm_swing'][:, None, None]
  for side in (-1.0, 1.0):
    shoulder = side * 0.105 * b
    ang = side * (0.12 + swing)
    hand_u, hand_v = shoulder + 0.34 * np.sin(ang), 0.17 + 0.34 * np.cos(ang)
    def arm(u, v, shoulder=shoulder, ang=ang):
      sd, t = _capsule(u, v, shoulder, 0.17, shoulder + 0.31 * np.sin(ang),
                       0.17 + 0.31 * np.cos(ang), 0.028 * b)
      return sd, (~e['long_sleeves'] & (t >= 0.45)).astype(np.float32)
    paint(0.13, 0.52, arm, torso, skin)
    paint(0.4, 0.55, lambda u, v, hu=hand_u, hv=hand_v: _ellipse(u, v, hu, hv, 0.026, 0.03), skin)
  paint(0.4, 0.62, lambda u, v: np.where(
      e['bag_type'] == 2, _box(u, v, bag_side * 0.17 * b, 0.47, 0.05, 0.06),
      _box(u, v, bag_side * (0.11 * b + 0.045), 0.56, 0.045, 0.05)),
        idn['bag'], where=(bag == 2) | (bag == 3))

  # Head: face from the front, hair from behind; hats.
  paint(0.05, 0.23, long_hair, hair, where=idn['long_hair'] & img['back'])
  paint(0.0, 0.14, lambda u, v: _ellipse(u, v, 0.0, 0.072, 0.045, 0.062),
        np.where(img['back'][:, None], hair, skin))
  paint(0.0, 0.05, lambda u, v: np.maximum(_ellipse(u, v, 0.0, 0.068, 0.049, 0.066), v - 0.045),
        hair)
  paint(0.0, 0.05, lambda u, v: np.maximum(_ellipse(u, v, 0.0, 0.05, 0.053, 0.045), v - 0.04),
        idn['hat'], where=idn['hat_on'])

  rgb, alpha = _composite(layers, (n, height, width))
  # A round body: darker towards the silhouette's sides.
  rgb *= (1.0 - 0.35 * np.clip((u / (0.14 * b)) ** 2, 0, 1))[:, None]
  shadow = np.zeros((n, height, width), np.float32)
  rows = band(0.9, 1.0)
  shadow[:, rows] = _coverage(_ellipse(u[:, rows], v[:, rows], 0.0, 0.955, 0.16 * b, 0.035),
                              ph * 0.25)   # soft-edged: a quarter of the figure's sharpness
  return rgb, alpha, shadow


def _occluders(img, height, width):
  """Poles, low objects (bicycles, benches) and side objects: (colour [n,3,H,1], coverage)."""
  n = len(img['occluder'])
  ys = np.arange(height, dtype=np.float32)[None, :, None]
  xs = np.arange(width, dtype=np.float32)[None, None, :]
  kind = img['occluder'][:, None, None]
  pos, size = img['occ_pos'][:, None, None], img['occ_size'][:, None, None]
  pole_w = (0.08 + 0.12 * size) * width
  pole_x = pos * (width - pole_w)
  pole = (xs >= pole_x) & (xs < pole_x + pole_w)
  low = ys >= height * (1 - (0.15 + 0.2 * size))
  side_w = (0.15 + 0.15 * size) * width
  side = np.where(pos < 0.5, xs < side_w, xs >= width - side_w)
  cover = np.where(kind == 1, pole, np.where(kind == 2, low, (kind == 3) & side))
  shade = 0.8 + 0.4 * ys / height     # a little vertical gradient so it reads as an object
  return img['occ_colour'][:, :, None, None] * shade[:, None], np.broadcast_to(
      cover, (n, height, width)).astype(np.float32)


def _gaussian_blur(x, sigma):
  """Separable Gaussian blur of [n, 3, H, W] images (edge padded)."""
  r = int(np.ceil(3 * sigma))
  if r == 0:
    return x
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k = (k / k.sum()).astype(np.float32)
  h, w = x.shape[2:]
  p = np.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode='edge')
  x = sum(k[i] * p[:, :, i:i + h] for i in range(2 * r + 1))
  p = np.pad(x, ((0, 0), (0, 0), (0, 0), (r, r)), mode='edge')
  return sum(k[i] * p[..., i:i + w] for i in range(2 * r + 1))


def _camera_look(x, cams, style, exposure, noise_rng):
  """Scene colours [n,3,H,W] in [0,1] -> what each camera records, as uint8 [n,H,W,3]."""
  h, w = x.shape[2:]
  s = {k: v[cams] for k, v in style.items()}
  per_image = lambda a: a[:, None, None, None]
  grey = x.mean(1, keepdims=True)
  x = grey + per_image(s['saturation']) * (x - grey)
  x *= s['gains'][:, :, None, None]
  yn = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
  xn = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
  x *= (1 + s['light'][:, 0, None, None] * xn + s['light'][:, 1, None, None] * yn)[:, None]
  x -= 0.5
  x *= per_image(s['contrast'] * s['brightness'] * exposure)
  x += per_image(0.5 * s['brightness'] * exposure)
  x = np.clip(x, 0, 1) ** per_image(s['gamma'])
  out = np.empty_like(x)
  for cam in np.unique(cams):
    sel = cams == cam
    out[sel] = _gaussian_blur(x[sel], float(style['blur'][cam]))
  out += noise_rng.standard_normal(out.shape, dtype=np.float32) * per_image(s['noise'])
  out = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
  return out.transpose(0, 2, 3, 1)


def _render_chunk(idn, img, cams, scenes, style, height, width, noise_rng):
  """Renders one chunk of images: scene crop, ground shadow, figure, occluder, camera look."""
  iy = np.arange(height)[None, None, :, None] + img['bg_y'][:, None, None, None]
  ix = np.arange(width)[None, None, None, :] + img['bg_x'][:, None, None, None]
  x = scenes[cams[:, None, None, None], np.arange(3)[None, :, None, None], iy, ix]
  rgb, alpha, shadow = _render_people(idn, img, height, width)
  x *= (1 - 0.45 * shadow)[:, None]
  x += (rgb - x) * alpha[:, None]
  occ_colour, occ = _occluders(img, height, width)
  x += (occ_colour - x) * occ[:, None]
  return _camera_look(x, cams, style, img['exposure'], noise_rng)


# ------------------------------------------------------------------------------------- public API

def _float32(arrays: dict) -> dict:
  """Renders in float32: half the memory traffic of numpy's float64 default."""
  return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in arrays.items()}


class _World(NamedTuple):
  """Everything the images of one parameter set are rendered from, in generation order."""
  style: dict          # per-camera look
  scenes: np.ndarray   # [C, 3, SH, SW] planar
  ids: dict            # per-identity appearance
  cams: np.ndarray     # [N] camera of each image
  pid_index: np.ndarray  # [N] 0-based identity of each image
  first: np.ndarray    # [N] first image of its (identity, camera) tracklet
  img: dict            # per-image nuisance


def _world(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
           shared_scene=False) -> _World:
  """Draws the cameras, scenes, people and per-image nuisance of a parameter set (checked first)."""
  _check_params(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
                shared_scene)
  num_ids = num_train_ids + num_test_ids
  style = _float32(_camera_styles(_rng(seed, 0), num_cameras))
  scene_rng = _rng(seed, 1)
  # Planar [C, 3, SH, SW] like all images while rendering: per-channel operations are fast.
  scenes = np.stack([_scene(scene_rng, c, num_cameras, height, width).transpose(2, 0, 1)
                     for c in range(num_cameras)])
  if shared_scene:
    # Every camera overlooks camera 0's scene; the others are still drawn, so that the random
    # streams (and so the people and their images) are those of the per-camera-scene set.
    scenes = np.repeat(scenes[:1], num_cameras, axis=0)
  ids = _float32(_identities(_rng(seed, 2), num_ids))
  cams = _camera_assignment(_rng(seed, 3), num_ids, num_cameras, images_per_id).reshape(-1)
  pid_index = np.repeat(np.arange(num_ids), images_per_id)
  first = np.ones(len(cams), bool)
  first[1:] = (pid_index[1:] != pid_index[:-1]) | (cams[1:] != cams[:-1])
  img = _float32(_image_params(_rng(seed, 4), np.cumsum(first) - 1, height, width,
                               scenes.shape[2:]))
  return _World(style, scenes, ids, cams, pid_index, first, img)


def _file_names(cams: np.ndarray, pid_index: np.ndarray) -> list[str]:
  """Market-1501 names `PPPP_cCs1_FFFFFF_00.jpg` in generation order (a frame counter per camera)."""
  frame = np.zeros(int(cams.max()) + 1, np.int64)
  names = []
  for pid, cam in zip(pid_index, cams):
    names.append(f'{pid + 1:04d}_c{cam + 1}s1_{frame[cam]:06d}_00.jpg')
    frame[cam] += 1
  return names


def generate(*, num_cameras: int, num_train_ids: int, num_test_ids: int, images_per_id: int,
             height: int, width: int, seed: int, shared_scene: bool = False,
             progress: bool = True) -> SyntheticSet:
  """Renders the whole data set in memory; the same arguments give the same bytes."""
  w = _world(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
             shared_scene)
  cams, pid_index = w.cams, w.pid_index
  # Test identities: the first image in each of their cameras is a query, the rest gallery.
  splits = np.where(pid_index < num_train_ids, 'train', 'gallery').astype('<U7')
  splits[(pid_index >= num_train_ids) & w.first] = 'query'

  images = np.empty((len(cams), height, width, 3), np.uint8)
  starts = range(0, len(cams), _CHUNK)
  for chunk, start in enumerate(tqdm.tqdm(starts, desc='synthetic images', unit='chunk',
                                          disable=None if progress else True)):
    sl = slice(start, start + _CHUNK)
    idn = {k: v[pid_index[sl]] for k, v in w.ids.items()}
    images[sl] = _render_chunk(idn, {k: v[sl] for k, v in w.img.items()}, cams[sl], w.scenes,
                               w.style, height, width, _rng(seed, 5, chunk))
  return SyntheticSet(images, (pid_index + 1).astype(np.int32), cams.astype(np.int32), splits)


def render_in_cameras(file_names: Sequence[str], target_cameras: Sequence[Sequence[int]], *,
                      num_cameras: int, num_train_ids: int, num_test_ids: int, images_per_id: int,
                      height: int, width: int, seed: int, shared_scene: bool = False
                      ) -> list[np.ndarray]:
  """Re-renders named images of a parameter set as other cameras would record them.

  For each file name (as `write_market_folder` wrote it), the same person in the same pose, view,
  framing and place in the scene, seen by each camera of `target_cameras[i]`: that camera's scene
  and look. Returns uint8 [len(target_cameras[i]), height, width, 3] per name. This is perfect
  camera-style transfer, which the synthetic set alone can give (an upper bound for the StarGAN).
  """
  w = _world(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
             shared_scene)
  index = {name: g for g, name in enumerate(_file_names(w.cams, w.pid_index))}
  out = []
  for name, targets in zip(file_names, target_cameras):
    if name not in index:
      raise ValueError(f'{name}: not an image of the synthetic set with seed {seed} and these '
                       'sizes; expected a file name from its folder')
    g, targets = index[name], np.asarray(targets, np.int32)
    if targets.size and (targets.min() < 0 or targets.max() >= num_cameras):
      raise ValueError(f'{name}: target cameras {targets.tolist()}: expected 0..{num_cameras - 1}')
    n = len(targets)
    idn = {k: np.repeat(v[w.pid_index[g]][None], n, 0) for k, v in w.ids.items()}
    img = {k: np.repeat(v[g][None], n, 0) for k, v in w.img.items()}
    # Its own noise stream per image, so a re-render does not depend on which others are asked.
    out.append(_render_chunk(idn, img, targets, w.scenes, w.style, height, width,
                             _rng(seed, 6, g)))
  return out


def params_of(synthetic_config, seed_offset: int = 0) -> dict:
  """The generator's keyword arguments from config.synthetic (seed_offset: another set, e.g. the
  validation set)."""
  params = {k: synthetic_config[k] for k in _PARAM_NAMES}
  params.update({k: bool(synthetic_config.get(k, False)) for k in _FLAG_NAMES})
  params['seed'] += seed_offset
  return params


def _params(**kwargs) -> dict:
  return {'version': VERSION, **{k: int(kwargs[k]) for k in _PARAM_NAMES},
          **{k: bool(kwargs.get(k, False)) for k in _FLAG_NAMES}}


def _matches_existing(root: pathlib.Path, params: dict) -> bool:
  """True if `root` already holds this data set; False if absent or empty; raises otherwise."""
  if not root.exists():
    return False
  if not root.is_dir():
    raise FileExistsError(f'{root}: exists and is not a folder; expected a folder for the '
                          'synthetic data set (or nothing there)')
  meta = root / META_FILE
  if not meta.exists():
    if any(root.iterdir()):
      raise FileExistsError(f'{root}: exists but is not a synthetic data set (no {META_FILE}); '
                            'expected an empty or absent folder')
    return False
  try:
    found = json.loads(meta.read_text())
    found = {k: found.get(k, False) if k in _FLAG_NAMES else found[k] for k in params}
  except (ValueError, KeyError, TypeError) as e:
    raise FileExistsError(f'{meta}: unreadable ({type(e).__name__}: {e}); delete {root} to '
                          'regenerate') from None
  if found != params:
    diff = ', '.join(f'{k}={found[k]!r} (asked {params[k]!r})' for k in params
                     if found[k] != params[k])
    raise FileExistsError(f'{root}: holds a synthetic data set with other parameters: {diff}; '
                          'delete it or choose another folder')
  return True


def write_market_folder(root, *, num_cameras: int, num_train_ids: int, num_test_ids: int,
                        images_per_id: int, height: int, width: int, seed: int,
                        shared_scene: bool = False) -> pathlib.Path:
  """Writes the data set as a Market-1501 folder at `root` (once; later calls just return it).

  Files are `PPPP_cCs1_FFFFFF_00.jpg` in bounding_box_train / query / bounding_box_test, plus
  synthetic.json with the parameters. The folder appears atomically (built next to `root`, then
  renamed), so an interrupted call leaves nothing behind that a later call would trust.
  """
  root = pathlib.Path(root)
  _check_params(num_cameras, num_train_ids, num_test_ids, images_per_id, height, width, seed,
                shared_scene)
  params = _params(num_cameras=num_cameras, num_train_ids=num_train_ids,
                   num_test_ids=num_test_ids, images_per_id=images_per_id, height=height,
                   width=width, seed=seed, shared_scene=shared_scene)
  if _matches_existing(root, params):
    return root
  data = generate(num_cameras=num_cameras, num_train_ids=num_train_ids,
                  num_test_ids=num_test_ids, images_per_id=images_per_id, height=height,
                  width=width, seed=seed, shared_scene=shared_scene)
  try:
    with atomic.building_folder(root) as tmp:
      for folder in FOLDERS.values():
        (tmp / folder).mkdir()
      names = _file_names(data.camids, data.pids - 1)
      for image, name, split in zip(tqdm.tqdm(data.images, desc='writing jpegs', disable=None),
                                    names, data.splits):
        # 4:4:4: no chroma subsampling, which would smear 2-pixel colour patterns at 64 px width.
        Image.fromarray(image).save(tmp / FOLDERS[split] / name, quality=JPEG_QUALITY,
                                    subsampling=0)
      counts = {s: int(np.sum(data.splits == s)) for s in FOLDERS}
      (tmp / META_FILE).write_text(json.dumps({**params, 'counts': counts}, indent=2))
  except OSError:
    if not _matches_existing(root, params):   # another process won the race: fine if equal
      raise
  return root
