r"""MeanFlow (Geng et al. 2025) on the offline MNIST digits: a one- and few-step generator trained from
scratch on the shared step.

  python -m research.main --config=experiments/meanflow_mnist.py:runlocal --workdir=workdirs/meanflow_mnist
  python -m research.main --config=experiments/meanflow_mnist.py:runlocal --workdir=workdirs/meanflow_mnist \
      --mode=eval                                   # one network evaluation per sample
  python -m research.main --config=experiments/meanflow_mnist.py:runlocal --workdir=workdirs/meanflow_mnist \
      --mode=eval --config.sample.steps=2           # two

The network predicts the average velocity u(z_t, r, t) over [r, t] of the flow path z_t = (1 - t) x
+ t e, trained on the MeanFlow identity u = v - (t - r) du/dt (one jax.jvp per step; the target
under stop-gradient), r = t on 75% of the rows, logit-normal (-0.4, 1) times, the adaptive weight
1 / sg(L + 0.01); the UNet takes (t, t - r) through two time embedders (``num_times = 2``). One
step: x = e - u(e, 0, 1). The official recipe's Adam beta2 0.95 is kept. Arguments: ``runlocal``,
``conditional``.
"""

import ml_collections

from research.config import adam, base_config, digits_diffusion_quick_start, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False)
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "meanflow",
      "p_mean": -0.4,
      "p_std": 1.0,
      "r_equals_t": 0.75,
      "norm_p": 1.0,
      "norm_eps": 0.01,
      "conditional": arg.conditional,
      "label_dropout": 0.1,
      "likelihood_steps": 0,  # the PF-ODE of u(z, t, t); off: a one-step model is judged by samples
    }
  )
  c.model.update(
    {
      "name": "ddpm_unet",
      "ch": 64,
      "ch_mult": (1, 2, 2),
      "num_res_blocks": 2,
      "attn_resolutions": (14,),
      "dropout": 0.0,
      "num_groups": 16,
      "patch_size": 1,  # 2: the UNet works on 2x2 patches (14x14), a quarter of the FLOPs
      "num_times": 2,
      "dtype": "float32",
    }
  )
  c.data.name = "offline_mnist"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(1e-4, b2=0.95, warmup_steps=1_000)
  c.train.num_steps = 40_000
  c.train.log_every = 100
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.sample.update({"num_samples": 64, "sampler": "meanflow", "steps": 1, "guidance_scale": 0.0})
  c.eval.batch_size = 250
  c.eval.feature_net = "digits_classifier"

  if arg.runlocal:  # flow_mnist's quick start, 1,200 steps (a MeanFlow step is a little dearer)
    digits_diffusion_quick_start(c, num_steps=1_200)
    c.train.ema_decay = 0.995
  return c
