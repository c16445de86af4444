r"""Latent diffusion (Rombach et al. 2022) on digits: a diffusion transformer (DiT, Peebles & Xie 2023)
on the 7x7x3 latents of the project's KL-f4 autoencoder (`experiments/autoencoder_mnist.py`).

The autoencoder is a frozen first stage, loaded through the one loader from its workdir and kept
in the checkpoint (research/tasks/diffusion.py: `first_stage`); the latents are its posterior
means times LDM's scale factor, 1 / their std over held-out digits (computed when the task is
built; `latent_scale=<s>` fixes it). Samples are decoded to pixels, so the digits classifier and
every evaluator read them as they read pixel-space models.

  python -m research.main --config=experiments/autoencoder_mnist.py:runlocal \
      --workdir=workdirs/autoencoder_mnist
  python -m research.main \
      --config=experiments/latent_mnist.py:runlocal,autoencoder=workdirs/autoencoder_mnist \
      --workdir=workdirs/latent_mnist
  python -m research.main \
      --config=experiments/latent_mnist.py:runlocal,autoencoder=workdirs/autoencoder_mnist \
      --workdir=workdirs/latent_mnist --mode=eval

The objective is flow matching with the velocity target (SiT, Ma et al. 2024), sampled with 18
Heun steps; DiT-S's width, depth and heads in the full config on 1x1 patches (49 tokens), AdamW 1e-4
as DiT. ``runlocal``: width 128, 6 blocks of 4 heads, batch 32, AdamW 1e-3 with warm-up and cosine
decay, clipping 1.0, EMA 0.998. Arguments: ``runlocal``, ``autoencoder=<workdir>`` (required),
``conditional``, ``latent_scale=<s>`` (0 = measured), ``steps=<n>``.
"""

import ml_collections

from research.config import adam, base_config, parse_arg, quick_start_schedule


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, autoencoder="", conditional=False, latent_scale=0.0, steps=0)
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "flow",
      "time_sampling": "uniform",
      "shift": 1.0,
      "conditional": arg.conditional,
      "label_dropout": 0.1,
      "loss_buckets": 10,
      "likelihood_steps": 0,  # bits/dim of latents are not of pixels
      "autoencoder": arg.autoencoder,
      "latent_scale": arg.latent_scale,
    }
  )
  c.model.update(
    {
      "name": "dit",
      "patch_size": 1,  # 7x7 latents: 49 tokens
      "hidden_size": 384,
      "depth": 12,
      "num_heads": 6,
      "mlp_ratio": 4.0,
      "learn_sigma": False,
      "dtype": "float32",
      "remat": False,
    }
  )
  c.data.name = "offline_mnist"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(1e-4)
  c.optim.model.name = "adamw"
  c.train.num_steps = arg.steps or 40_000
  c.train.log_every = 100
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.sample.update(
    {
      "num_samples": 64,
      "sampler": "heun",
      "steps": 18,
      "guidance_scale": 1.0 if arg.conditional else 0.0,
    }
  )
  c.eval.batch_size = 250
  c.eval.feature_net = "digits_classifier"
  if arg.runlocal:
    c.batch_size = 32
    c.model.update({"hidden_size": 128, "depth": 6, "num_heads": 4})
    c.optim.model.update(
      {
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "schedule": "cosine",
        "end_lr_factor": 0.05,
        "grad_clip_norm": 1.0,
      }
    )
    quick_start_schedule(c, arg.steps or 1_600)
  return c
