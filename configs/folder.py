"""Any Market-layout folder (bounding_box_train / query / bounding_box_test) given by path.

CPU-sized by default: the tiny backbone at 128x64 (about 15 s an epoch of 7,000 images on 2 CPU
cores, against 137 s for ResNet-18) and a small StarGAN at 64x32 whose fakes are resized back to
the images' size. The paper's merging schedule is kept (mp = 0.05, 20 + 2 epochs per step).
Towards the paper's settings on a GPU/TPU:
  jaxreid --config=configs/folder.py --config.data.root=/path/to/folder --workdir=runs/folder \
      --config.model.arch=resnet50 --config.model.embedding_dim=2048 \
      --config.data.height=256 --config.data.width=128 --config.train.batch_size=16 \
      --config.model.init_checkpoint=resnet50.msgpack --config.train.backbone_lr_mult=0.1
  and, for the paper's StarGAN, the camstyle fields that common.use_cpu_stargan sets, at
  configs/common.py's values (height/width 256/128, g/d_conv_dim 64, n_critic 5, lr 1e-4, ...).
"""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'folder'
  c.data.height = 128
  c.data.width = 64
  c.model.arch = 'tiny'
  c.model.embedding_dim = 128
  c.train.batch_size = 32
  # No ImageNet weights can be loaded here, so the backbone learns from scratch: it trains at the
  # full learning rate (the paper's 0.1x is for fine-tuning a pretrained ResNet-50).
  c.train.backbone_lr_mult = 1.0
  # The synthetic config's StarGAN, trained longer: 2,000 iterations of batch 16 at 64x32.
  common.use_cpu_stargan(c, num_iters=2000)
  c.camstyle.log_every = 20
  c.camstyle.sample_every = 250
  c.camstyle.checkpoint_every = 250
  c.eval.batch_size = 256
  return c
