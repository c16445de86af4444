r"""DDPM on CIFAR-10 exactly as Ho et al. 2020 (appendix B): the 35.7M-parameter UNet, T = 1000 linear
betas (1e-4 to 0.02), epsilon prediction with L_simple, Adam 2e-4 with 5,000 warm-up steps, gradient
clipping at 1, EMA 0.9999, batch 128, random horizontal flips, dropout 0.1, 800k steps.

Needs the prepared TFDS data (no download at run time):
``python -m research.data.prepare --name=cifar10 --data_dir=$TFDS_DATA_DIR`` once, then

  python -m research.main --config=experiments/ddpm_cifar10.py --workdir=workdirs/ddpm_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m research.main --config=experiments/ddpm_cifar10.py --workdir=workdirs/ddpm_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR --mode=sample      # DDIM-50 by default; ddpm: 1000 steps
  python -m research.main --config=experiments/ddpm_cifar10.py --workdir=workdirs/ddpm_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR --mode=eval        # bits/dim bound and L_simple

Arguments: ``runlocal`` (tiny UNet, minutes on a CPU), ``bf16`` (bfloat16 compute, fp32 params),
``target=v`` (v-prediction), ``schedule=cosine``, ``conditional`` (class labels, classifier-free
guidance with label dropout 0.1).
"""

import ml_collections

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(
    arg, runlocal=False, bf16=False, target="eps", schedule="linear", conditional=False
  )
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "schedule": arg.schedule,  # linear (Ho et al.) | cosine (Nichol & Dhariwal)
      "timesteps": 1000,
      "target": arg.target,  # eps | v
      "conditional": arg.conditional,
      "label_dropout": 0.1,  # probability of the null label in training (conditional only)
      "loss_buckets": 10,  # per-timestep loss logged in this many equal ranges of t
      "eval_timesteps": 1000,  # terms of the bound evaluated per image (T = exact)
      "eval_variance": "beta",  # reverse-process variance in the bound: beta | beta_tilde
    }
  )
  c.model.update(
    {
      "name": "ddpm_unet",
      "ch": 128,
      "ch_mult": (1, 2, 2, 2),
      "num_res_blocks": 2,
      "attn_resolutions": (16,),
      "dropout": 0.1,
      "dtype": "bfloat16" if arg.bf16 else "float32",
      "remat": False,
    }
  )
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.data.shuffle_buffer = 50_000
  c.optim.model = adam(2e-4, warmup_steps=5_000, grad_clip_norm=1.0)
  c.train.num_steps = 800_000
  c.train.log_every = 500
  c.train.sample_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.ema_decay = 0.9999
  c.sample.update(
    {
      "num_samples": 64,
      "sampler": "ddim",  # ddim | ddpm (ancestral)
      "steps": 50,  # DDIM steps (ddpm always takes all T)
      "eta": 0.0,  # DDIM stochasticity: 0 deterministic, 1 = ancestral with beta-tilde
      "variance": "beta",  # ancestral variance: beta | beta_tilde
      "guidance_scale": 0.0,  # w in (1 + w) eps(x, c) - w eps(x); 0 = the conditional model
      "clip_x0": True,
    }
  )
  c.eval.batch_size = 512

  if arg.runlocal:
    c.batch_size = 16
    c.model.update(
      {"ch": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "num_groups": 8, "attn_resolutions": (16,)}
    )
    c.model.dropout = 0.0
    c.data.shuffle_buffer = 1_000
    c.optim.model.warmup_steps = 50
    c.train.num_steps = 300
    c.train.log_every = 50
    c.train.sample_every = 150
    c.train.checkpoint_every = 150
    c.train.ema_decay = 0.99
    c.sample.steps = 20
    c.sample.num_samples = 16
    c.sample.grid_size = 16
    c.task.eval_timesteps = 50
    c.eval.batch_size = 64
  return c
