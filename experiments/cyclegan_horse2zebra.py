r"""CycleGAN (Zhu et al. 2017) on horse2zebra: unpaired horses (A) <-> zebras (B), the paper's recipe.

Two ResNet generators (c7s1-64, d128, d256, 9 residual blocks, u128, u64, c7s1-3; reflection padding,
instance normalisation), two 70x70 PatchGANs with instance normalisation, LSGAN losses, cycle
weight lambda = 10, identity weight 0.5 lambda, D's loss halved and fed from a 50-image history of
generated images each, Adam 2e-4 beta1 0.5, batch 1, jitter 286 -> 256 and mirroring, 200 epochs of
max(|A|, |B|) = 1,334 steps (100 at the base rate, 100 of linear decay to 0), N(0, 0.02) init.
Four parts of one train state: gen_ab, gen_ba, disc_a, disc_b (research/tasks/cyclegan.py).
Evaluation: the held-out cycle and identity L1, and the InceptionV3 FID of G(test horses) vs the
test zebras (converted weights: config.eval.inception_weights).

Data: TFDS `cycle_gan/horse2zebra` by name (trainA 1,067 / trainB 1,334 / testA 120 / testB 140),
read unpaired: domain A from split `trainA`, domain B from `unpaired_split` `trainB`. Internet once:

  python -m research.main --config=experiments/cyclegan_horse2zebra.py \
      --workdir=workdirs/cyclegan_horse2zebra --config.data.download=True
"""

from research.config import adam, base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.seed = 0
  c.batch_size = 1
  c.task.name = "cyclegan"
  c.task.loss = "lsgan"
  c.task.cycle_weight = 10.0
  c.task.identity_weight = 0.5
  c.task.disc_loss_scale = 0.5
  c.task.pool_size = 50
  c.model.name = "cyclegan"  # a label; the networks are the two entries below
  c.model.dtype = "float32"
  c.model.generator = {
    "name": "resnet_generator",
    "features": 64,
    "n_blocks": 9,
    "norm": "instance",
  }
  c.model.discriminator = {
    "name": "patch_discriminator",
    "features": 64,
    "n_layers": 3,
    "kind": "patch",
    "norm": "instance",
  }
  c.data.name = "cycle_gan/horse2zebra"
  c.data.split = "trainA"
  c.data.unpaired_split = "trainB"
  c.data.eval_split = "testA"
  c.data.unpaired_eval_split = "testB"
  c.data.image_size = 256
  c.data.jitter_size = 286
  c.data.random_flip = True
  c.data.shuffle_buffer = 1_334
  c.train.num_steps = 200 * 1_334
  for part in ("gen_ab", "gen_ba", "disc_a", "disc_b"):
    c.optim[part] = adam(
      2e-4, b1=0.5, b2=0.999, schedule="linear", hold_steps=c.train.num_steps // 2
    )
  c.train.log_every = 100
  c.train.sample_every = 5_336
  c.train.checkpoint_every = 5_336
  c.train.ema_decay = 0.0
  c.sample.num_samples = 16
  c.sample.grid_size = 16
  c.sample.use_ema = False
  c.eval.batch_size = 8
  c.eval.num_samples = 120  # the test horses, each translated once
  c.eval.sample_batch_size = 8
  c.eval.feature_net = "inception_v3"
  c.eval.reference_split = "testB"  # FID of G(horses) against the real test zebras
  return c
