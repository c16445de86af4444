r"""A small TransGAN (Jiang et al. 2021) on scikit-learn's 8x8 digits (offline, no download).

Generator: z (64-d, normalised) -> 4x4 tokens of width 128 -> 2 blocks -> pixel shuffle -> 8x8 x 32
-> 2 blocks -> 1x1 projection, tanh. Discriminator: ViT on 2x2 patches (16 tokens + class token),
width 64, 2 blocks. This is the earlier TransGAN layout (single-scale D, one output projection,
absolute positions): at 8x8 the final version's multi-scale D would see 2x2 coarse tokens; its
options are in research/models/transgan.py. The paper's recipe at small scale: WGAN-GP (lambda
10) + drift 1e-3, n_critic = 4 critic updates per step, each on its own dis_bs = 64 real digits
(``batch_size`` = 4 x 64 real images per step, ``train.split_repeats``), gen_bs = 2 x dis_bs
latents for the generator, Adam betas (0, 0.99), DiffAugment (translation and color: cutout would
erase half of an 8x8 digit), generator EMA. The 1,438 training digits are few, which is what
DiffAugment is for. ``runlocal``: width 64, 2 critic updates of 32 digits each (batch_size 64),
4,000 steps (about 7 minutes here); eval reads the samples with the 8x8 digits classifier
(trained once when missing).

  python -m research.main --config=experiments/transgan_digits.py:runlocal --workdir=workdirs/tg_digits
  python -m research.main --config=experiments/transgan_digits.py --workdir=workdirs/tg_digits_full
  python -m research.main --config=experiments/transgan_digits.py:runlocal --workdir=workdirs/tg_digits \
      --mode=sample
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  # Real images per step = n_critic x dis_bs (4 x 64; runlocal 2 x 32): each critic update takes
  # its own strided share (train.split_repeats); the generator draws gen_batch_mult x dis_bs z.
  c.batch_size = 256
  c.task.name = "gan"
  c.task.loss = "wgan"
  c.task.conditional = False
  c.task.latent_dim = 64
  c.task.latent_dist = "normal"
  c.task.gp_weight = 10.0
  c.task.drift_weight = 1e-3
  c.task.r1_gamma = 0.0
  c.task.r1_every = 1
  # Cutout (a zeroed square of half the side) erases half of an 8x8 digit: translation and color
  # only here; transgan_cifar10.py keeps the paper's three policies.
  c.task.diffaug = "translation,color"
  c.task.sample_bn = "batch"
  c.task.gen_batch_mult = 2
  c.model.name = "transgan"
  c.model.dtype = "float32"
  c.model.generator = {
    "name": "transgan_generator",
    "bottom_width": 4,
    "dim": 128,
    "depths": (2, 2),
    "heads": 4,
    "mlp_ratio": 4,
    "latent_norm": True,
  }
  c.model.discriminator = {
    "name": "vit_discriminator",
    "patch_size": 2,
    "dim": 64,
    "depth": 2,
    "heads": 4,
    "mlp_ratio": 4,
  }
  c.data.name = "offline_digits"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 1_438
  c.optim.disc = adam(5e-4, b1=0.0, b2=0.99)  # TransGAN: 1e-4; 5e-4 learns faster on 8x8 digits
  c.optim.gen = adam(5e-4, b1=0.0, b2=0.99)
  c.train.num_steps = 10_000
  c.train.part_steps = {"disc": 4}
  c.train.split_repeats = True
  c.train.ema_decay = 0.999
  c.train.log_every = 100
  c.train.sample_every = 1_000
  c.train.checkpoint_every = 1_000
  c.sample.num_samples = 64
  c.sample.grid_size = 64
  c.eval.batch_size = 128
  c.eval.feature_net = "digits_classifier"  # its 8x8 classifier, trained once when missing
  c.eval.classifier_data = "offline_digits"

  if arg.runlocal:
    c.batch_size = 64  # dis_bs 32
    c.model.generator.update({"dim": 64, "heads": 2})
    c.train.num_steps = 4_000  # ~7 min here (1,500 steps: 30% read confidently, 4,000: 36%)
    c.train.part_steps = {"disc": 2}
    c.train.ema_decay = 0.995
    c.train.log_every = 100
    c.train.sample_every = 250
    c.train.checkpoint_every = 500
  return c
