"""Any Market-layout folder (bounding_box_train / query / bounding_box_test) given by path.

CPU-sized by default (small backbone, 128x64); override towards the paper's settings on a GPU/TPU:
  jaxreid --config=configs/folder.py --config.data.root=/path/to/folder --workdir=runs/folder \
      --config.model.arch=resnet50 --config.data.height=256 --config.data.width=128
"""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'folder'
  c.data.height = 128
  c.data.width = 64
  c.model.arch = 'resnet18'
  c.model.embedding_dim = 512
  c.camstyle.height = 128
  c.camstyle.width = 64
  c.camstyle.load_height = 144
  c.camstyle.load_width = 72
  c.camstyle.d_repeat_num = 5
  return c
