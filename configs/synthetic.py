"""The embedded default: a procedurally generated multi-camera data set, sized for a 2-core CPU."""

from jaxreid.configlib import load_sibling

common = load_sibling(__file__, 'common')


def get_config():
  c = common.get_config()
  c.data.name = 'synthetic'
  c.data.height = 128
  c.data.width = 64
  c.model.arch = 'tiny'
  c.model.embedding_dim = 128
  c.train.batch_size = 32
  c.camstyle.height = 128
  c.camstyle.width = 64
  c.camstyle.load_height = 144
  c.camstyle.load_width = 72
  c.camstyle.g_conv_dim = 16
  c.camstyle.g_repeat_num = 2
  c.camstyle.d_conv_dim = 16
  c.camstyle.d_repeat_num = 5
  c.camstyle.batch_size = 16
  c.camstyle.num_epochs = 10
  c.camstyle.decay_epochs = 5
  c.eval.batch_size = 256
  c.validation.name = 'synthetic_val'  # a second synthetic set from another seed
  return c
