"""Market-1501 (6 cameras) with the paper's settings: ResNet-50 at 256x128.

  jaxreid --config=configs/market1501.py --config.data.root=/path/to/folder --workdir=runs/market1501
"""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'market1501'
  # The paper validates Market-1501 on DukeMTMC-reID.
  c.validation.name = 'dukemtmc_reid'
  return c
