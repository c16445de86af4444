r"""Flow matching on CIFAR-10: rectified flow with SD3's logit-normal t on the DDPM UNet.

  python -m research.main --config=experiments/flow_cifar10.py --workdir=gs://bucket/runs/flow_cifar10 \
      --config.data.data_dir=gs://bucket/tensorflow_datasets
  python -m research.main --config=experiments/flow_cifar10.py:runlocal --workdir=workdirs/flow_cifar10

The DDPM CIFAR-10 UNet (35.7M parameters: ch 128, (1, 2, 2, 2), 2 blocks, attention at 16x16,
dropout 0.1) trained on the linear path x_t = (1 - t) x0 + t eps with the velocity target (Liu et
al. 2022; Lipman et al. 2022), logit-normal t (0, 1) (Esser et al. 2024); DDPM's optimizer (Adam 2e-4,
5,000 warm-up steps, clipping at 1, batch 128, EMA 0.9999, flips), 800k steps; sampled with
Heun's method, 18 steps (35 evaluations). Eval: bits/dim through the probability-flow ODE and FID
with the Inception network. ``meanflow`` trains the same UNet as a MeanFlow model (two time inputs,
Adam beta2 0.95 as the MeanFlow recipe) sampled in one step.
"""

import ml_collections

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, conditional=False, bf16=False, meanflow=False)
  c = base_config()
  c.batch_size = 128
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": "flow",
      "time_sampling": "logit_normal",
      "loc": 0.0,
      "scale": 1.0,
      "conditional": arg.conditional,
      "label_dropout": 0.1,
      "likelihood_steps": 64,
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
    }
  )
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.optim.model = adam(2e-4, warmup_steps=5_000, grad_clip_norm=1.0)
  c.train.num_steps = 800_000
  c.train.log_every = 100
  c.train.sample_every = 10_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.sample.update({"num_samples": 64, "sampler": "heun", "steps": 18, "guidance_scale": 0.0})
  c.eval.batch_size = 512
  c.eval.num_samples = 50_000
  c.eval.feature_net = "inception_v3"
  if arg.meanflow:  # MeanFlow's own options keep their defaults (-0.4, 1.0 times; 75% r = t)
    for key in ("time_sampling", "loc", "scale"):
      del c.task[key]
    c.task.objective = "meanflow"
    c.task.likelihood_steps = 0
    c.model.num_times = 2
    c.optim.model.b2 = 0.95
    c.sample.update({"sampler": "meanflow", "steps": 1})

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
    c.task.likelihood_steps = 4
    c.sample.steps = 8
    c.eval.num_samples = 64
    c.eval.feature_net = ""
  return c
