r"""TransGAN (Jiang, Chang & Wang 2021) on CIFAR-10 (TFDS ``cifar10``): the paper's recipe.

Generator: z (1024-d, normalised) -> 8x8 tokens of width 1024 -> 5 blocks -> pixel shuffle ->
16x16 x 256 -> 4 blocks -> pixel shuffle -> 32x32 x 64 -> 2 blocks -> 1x1 projection, tanh.
Discriminator: ViT on 4x4 patches (64 tokens + class token), width 384, 7 blocks, 4 heads.
WGAN-GP (lambda 10) with the drift term 1e-3 E d(x)^2 (``--loss wgangp-eps``), 4 critic steps per
generator step, Adam lr 1e-4 betas (0, 0.99) for both, generator batch 2x the critic batch (gen_bs
128, dis_bs 64), DiffAugment translation,cutout,color, generator EMA 0.9999, xavier-uniform init.
TransGAN reports IS 9.02 / FID 9.26 (NeurIPS'21 version) after 500k iterations on 8 GPUs.

Differences from the reference code (see research/models/transgan.py): full attention instead of
grid attention, absolute instead of relative position embeddings, pre-LN blocks, a single-scale
ViT discriminator; the 4 critic steps of one step share one real batch (fresh z and augmentations
each); DiffAugment uses Zhao et al.'s constants (TransGAN's copy shifts up to 1/5 of the side and
applies cutout to 30% of batches); the EMA is a plain 0.9999 decay without TransGAN's kimg ramp;
the reference code's weight decay 1e-3 only applies to its AdamW path and is off here too.

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
  c.batch_size = 64  # dis_bs; the generator's update uses gen_batch_mult x this
  c.task.name = "gan"
  c.task.loss = "wgan"
  c.task.conditional = False
  c.task.latent_dim = 1024
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
    "latent_norm": True,
  }
  c.model.discriminator = {
    "name": "vit_discriminator",
    "patch_size": 4,
    "dim": 384,
    "depth": 7,
    "heads": 4,
    "mlp_ratio": 4,
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
  c.train.ema_decay = 0.9999
  c.train.log_every = 500
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.sample.num_samples = 64
  c.sample.grid_size = 64
  c.eval.batch_size = 512

  if arg.runlocal:
    c.batch_size = 16
    c.task.latent_dim = 64
    c.model.generator.update({"dim": 128, "depths": (1, 1, 1), "heads": 2})
    c.model.discriminator.update({"dim": 64, "depth": 2, "heads": 2})
    c.data.shuffle_buffer = 1_000
    c.train.num_steps = 200
    c.train.part_steps = {"disc": 2}
    c.train.ema_decay = 0.99
    c.train.log_every = 20
    c.train.sample_every = 100
    c.train.checkpoint_every = 100
    c.eval.batch_size = 128
  return c
