r"""EDM on CIFAR-10 (Karras et al. 2022): the paper's training settings on the DDPM UNet.

  python -m research.main --config=experiments/edm_cifar10.py --workdir=gs://bucket/runs/edm_cifar10 \
      --config.data.data_dir=gs://bucket/tensorflow_datasets
  python -m research.main --config=experiments/edm_cifar10.py:runlocal --workdir=workdirs/edm_cifar10

Kept from the paper (its CIFAR-10 DDPM++ / "edm" row): sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2),
the preconditioning and unit effective weight; Adam lr 1e-3 (betas 0.9, 0.999, eps 1e-8) with a
linear warm-up over 10 Mimg (19,531 steps at batch 512), batch 512, 200 Mimg (390,625 steps), EMA
with a half-life of 0.5 Mimg (0.5^(512 / 500,000) = 0.99929 per step), dropout 0.13, fp32; the
rho = 7 grid, 18 Heun steps (35 evaluations); ``conditional`` trains the class-conditional model.

What differs, because the project's denoiser is the DDPM UNet (research/models/unet.py), not
SongUNet: 128 channels, multipliers (2, 2, 2) and 4 blocks per resolution with attention at 16x16
as DDPM++, but DDPM's residual blocks (GroupNorm 32, no 1/sqrt(2) skip scaling, no FIR resampling),
its sinusoidal time embedding fed c_noise = ln(sigma)/4 (DDPM++ uses a positional embedding of the
same input), no EMA ramp-up (the half-life cap of 0.05 x images seen) and no ADA augmentation (the
paper's p = 0.12 geometric augmentation with its augment-label conditioning); horizontal flips
stand in for it (the paper's pipeline includes xflips).
"""

import ml_collections

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False, bf16=False)
  c = base_config()
  c.batch_size = 512
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "edm",
      "sigma_data": 0.5,
      "p_mean": -1.2,
      "p_std": 1.2,
      "conditional": arg.conditional,
      "label_dropout": 0.1,
    }
  )
  c.model.update(
    {
      "name": "ddpm_unet",
      "ch": 128,
      "ch_mult": (2, 2, 2),
      "num_res_blocks": 4,
      "attn_resolutions": (16,),
      "dropout": 0.13,
      "dtype": "bfloat16" if arg.bf16 else "float32",
    }
  )
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.optim.model = adam(1e-3, warmup_steps=19_531)
  c.train.num_steps = 390_625
  c.train.log_every = 100
  c.train.sample_every = 10_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.99929
  c.sample.update({"num_samples": 64, "sampler": "heun", "steps": 18, "guidance_scale": 0.0})
  c.eval.batch_size = 512
  c.eval.num_samples = 50_000
  c.eval.feature_net = "inception_v3"

  if arg.runlocal:
    c.batch_size = 16
    c.model.update({"ch": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "num_groups": 8})
    c.model.dropout = 0.0
    c.data.shuffle_buffer = 1_000
    c.optim.model.warmup_steps = 50
    c.train.num_steps = 300
    c.train.log_every = 50
    c.train.sample_every = 300
    c.train.checkpoint_every = 300
    c.train.ema_decay = 0.99
    c.sample.steps = 8
    c.eval.num_samples = 64
    c.eval.feature_net = ""
  return c
