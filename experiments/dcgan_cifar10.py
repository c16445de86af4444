r"""DCGAN (Radford et al. 2015) on CIFAR-10 (TFDS ``cifar10``), 32x32x3.

Generator z (100-d uniform) -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x3 (the paper's 64x64
network less one stage), discriminator 32 -> 16 (128) -> 8 (256) -> 4 (512); BatchNorm, ReLU /
LeakyReLU(0.2), tanh, N(0, 0.02) init, Adam lr 2e-4 beta1 0.5, minibatch 128, non-saturating loss,
random horizontal flips. The paper reports no FID (the FID/KID suite is a separate issue); SNGAN's
ResNet with hinge + spectral norm reaches FID 21.7 on CIFAR-10, a DCGAN of this size typically
30-40.

Needs the prepared TFDS data (no download at run time): once, on a machine with internet,
``python -m research.data.prepare --name=cifar10 --data_dir=$TFDS_DATA_DIR``, then

  python -m research.main --config=experiments/dcgan_cifar10.py --workdir=workdirs/dcgan_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m research.main --config=experiments/dcgan_cifar10.py --workdir=workdirs/dcgan_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR --mode=sample

Arguments: ``runlocal`` (a small CPU run), ``conditional`` (one-hot labels into G, projection D with
spectral norm; sample mode writes class_grid.png), ``loss=hinge|non_saturating|minimax|wgan``
(``wgan`` is WGAN-GP's recipe: gradient penalty, 5 critic updates per step on their own real
batches, layer-normalised critic, Adam betas (0, 0.9)).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False, loss="non_saturating")
  c = base_config()
  c.batch_size = 128
  c.task.name = "gan"
  c.task.loss = arg.loss
  c.task.conditional = arg.conditional
  c.task.latent_dim = 100
  c.task.latent_dist = "uniform"
  c.task.gp_weight = 0.0
  c.task.drift_weight = 0.0
  c.task.r1_gamma = 0.0
  c.task.r1_every = 1
  c.task.diffaug = ""
  c.task.sample_bn = "batch"
  c.task.gen_batch_mult = 1
  c.model.name = "dcgan"  # a label; the networks are the two entries below
  c.model.dtype = "float32"
  c.model.generator = {"name": "dcgan_generator", "features": 128, "upsample": "transpose"}
  c.model.discriminator = {
    "name": "dcgan_discriminator",
    "features": 128,
    "norm": "batch",
    "spectral_norm": False,
  }
  if arg.conditional:
    c.model.discriminator.update({"norm": "none", "spectral_norm": True})
  c.data.name = "cifar10"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.random_flip = True
  c.data.shuffle_buffer = 50_000
  c.optim.disc = adam(2e-4, b1=0.5, b2=0.999)
  c.optim.gen = adam(2e-4, b1=0.5, b2=0.999)
  c.train.num_steps = 100_000  # 256 epochs
  c.train.log_every = 200
  c.train.sample_every = 2_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.999
  c.train.part_steps = {"disc": 1}
  c.sample.num_samples = 64
  c.sample.grid_size = 64
  if arg.conditional:
    c.sample.grid_size = 100  # 10 x 10: column j is class j
    c.sample.num_samples = 80
  c.eval.batch_size = 512

  if arg.runlocal:
    c.batch_size = 64
    c.model.generator.features = 32
    c.model.discriminator.features = 32
    c.data.shuffle_buffer = 1_000
    c.train.num_steps = 1_000
    c.train.log_every = 50
    c.train.sample_every = 200
    c.train.checkpoint_every = 500
    c.train.ema_decay = 0.99
    c.eval.batch_size = 128
  if arg.loss == "wgan":
    # WGAN-GP (Gulrajani et al. 2017, Algorithm 1): lambda = 10, n_critic = 5 critic updates per
    # generator update, each on its own real batch (dis_bs 64, runlocal 32: batch_size =
    # 5 x dis_bs, train.split_repeats), Adam lr 1e-4 betas (0, 0.9), and no BatchNorm in the
    # critic (sec. 4: layer normalisation instead; the conditional critic keeps spectral norm).
    dis_bs = 32 if arg.runlocal else 64
    c.batch_size = 5 * dis_bs
    c.task.gp_weight = 10.0
    c.train.part_steps = {"disc": 5}
    c.train.split_repeats = True
    if not arg.conditional:
      c.model.discriminator.norm = "layer"
    c.optim.disc = adam(1e-4, b1=0.0, b2=0.9)
    c.optim.gen = adam(1e-4, b1=0.0, b2=0.9)
  return c
