"""MSMT17 (V1 or V2 layout, 15 cameras) with the paper's settings: ResNet-50, batch 64.

  jaxreid --config=configs/msmt17.py --config.data.root=/path/to/MSMT17_V1 --workdir=runs/msmt17
"""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'msmt17'
  c.train.batch_size = 64
  c.validation.name = 'market1501'
  return c
