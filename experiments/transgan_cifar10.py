r"""TransGAN (Jiang, Chang & Wang 2021) on CIFAR-10 (TFDS ``cifar10``): the final NeurIPS'21 recipe.

Reference: VITA-Group/TransGAN ``exps/cifar_train.py`` with generator ``ViT_custom_scale2_rp_noise``
and discriminator ``ViT_custom_scale2`` (see research/models/transgan.py for the version history).
Generator: z (256-d normal) -> 8x8 tokens of width 1024 -> 5 blocks -> pixel shuffle -> 16x16 x 256
-> 4 blocks -> pixel shuffle -> 32x32 x 64 -> 2 blocks; every stage projected to RGB (1x1),
upsampled and summed; relative position bias in every block, full attention at every stage (the
paper's grid attention is for 64x64 and up: ``--config.model.generator.grid=16`` turns it on).
Discriminator: multi-scale ViT, width 384, 4 heads: 2x2 patches (16x16 tokens, width 288) through
3 blocks, average-pooled to 8x8 and joined by 4x4 patches (width 96), 3 more blocks, then one block
with the class token. WGAN-GP (lambda 10) with the drift term 1e-3 E d(x)^2 (``--loss
wgangp-eps``), n_critic = 4, each critic update on its own 64 real images (dis_bs 64:
``batch_size`` = 4 x 64 real images per step, ``train.split_repeats``), 128 latents for the
generator (gen_bs = 2 x dis_bs), Adam lr 1e-4 betas (0, 0.99) decayed linearly to 0, DiffAugment
translation,cutout,color, generator EMA, xavier-uniform init, 500k generator steps. TransGAN reports
IS 9.02 / FID 9.26 with this version (the earlier ``ViT_custom`` one, latent 1024 with latent norm,
a depth-7 single-scale D on 4x4 patches: IS 8.64 / FID 11.89; set model.generator.rgb_skips and
relative_position False, latent_norm True, and the discriminator's multi_scale False to get it).

Remaining differences from the reference code: tanh on G's output, no noise injection in G,
pre-LN GELU blocks with xavier init in both networks (see research/models/transgan.py);
DiffAugment uses Zhao et al.'s constants (TransGAN's copy shifts up to 1/5 of the side and applies
cutout to 30% of batches); the EMA is a plain 0.9999 decay without TransGAN's 500-kimg half-life
and ramp; the reference code's weight decay 1e-3 only applies to its AdamW path and is off here.

  python -m research.main --config=experiments/transgan_cifar10.py --workdir=workdirs/transgan \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m research.main --config=experiments/transgan_cifar10.py:runlocal --workdir=/tmp/tg \
      --config.data.data_dir=$TFDS_DATA_DIR

(prepare the data once with ``python -m research.data.prepare --name=cifar10``). For speed on
accelerators add ``--config.model.dtype=bfloat16``.
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  # Real images per training step = n_critic x dis_bs = 4 x 64: each critic update takes its own
  # strided 64 (train.split_repeats), the generator's update draws gen_batch_mult x 64 = 128 z.
  c.batch_size = 256
  c.task.name = "gan"
  c.task.loss = "wgan"
  c.task.conditional = False
  c.task.latent_dim = 256
  c.task.latent_dist = "normal"
  c.task.gp_weight = 10.0
  c.task.drift_weight = 1e-3
  c.task.r1_gamma = 0.0
  c.task.r1_every = 1
  c.task.diffaug = "translation,cutout,color"
  c.task.sample_bn = "batch"  # no BatchNorm in either network: has no effect
  c.task.gen_batch_mult = 2
  c.model.name = "transgan"  # a label; the networks are the two entries below
  c.model.dtype = "float32"
  c.model.generator = {
    "name": "transgan_generator",
    "bottom_width": 8,
    "dim": 1024,
    "depths": (5, 4, 2),
    "heads": 4,
    "mlp_ratio": 4,
    "latent_norm": False,
    "rgb_skips": True,
    "relative_position": True,
    "grid": 0,
  }
  c.model.discriminator = {
    "name": "vit_discriminator",
    "patch_size": 2,
    "dim": 384,
    "depth": 3,
    "heads": 4,
    "mlp_ratio": 4,
    "multi_scale": True,
    "relative_position": True,
  }
  c.data.name = "cifar10"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.random_flip = False
  c.data.shuffle_buffer = 50_000
  c.optim.disc = adam(1e-4, b1=0.0, b2=0.99, schedule="linear", end_lr_factor=0.0)
  c.optim.gen = adam(1e-4, b1=0.0, b2=0.99, schedule="linear", end_lr_factor=0.0)
  c.train.num_steps = 500_000
  c.train.part_steps = {"disc": 4}
  c.train.split_repeats = True
  c.train.ema_decay = 0.9999
  c.train.log_every = 500
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.sample.num_samples = 64
  c.sample.grid_size = 64
  c.eval.batch_size = 512

  if arg.runlocal:
    c.batch_size = 16  # 2 critic updates of 8 real images, 16 fakes for the generator
    c.task.latent_dim = 64
    c.model.generator.update({"dim": 128, "depths": (1, 1, 1), "heads": 2})
    c.model.discriminator.update({"dim": 64, "depth": 1, "heads": 2})
    c.data.shuffle_buffer = 1_000
    c.train.num_steps = 200
    c.train.part_steps = {"disc": 2}
    c.train.ema_decay = 0.99
    c.train.log_every = 20
    c.train.sample_every = 100
    c.train.checkpoint_every = 100
    c.eval.batch_size = 128
  return c
