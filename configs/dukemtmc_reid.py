"""DukeMTMC-reID (8 cameras) with the paper's settings: ResNet-50 at 256x128.

  jaxreid --config=configs/dukemtmc_reid.py --config.data.root=/path/to/folder --workdir=runs/dukemtmc_reid
"""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'dukemtmc_reid'
  c.validation.name = 'market1501'
  return c
