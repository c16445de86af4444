"""Flow / EDM / MeanFlow (and DDPM) small enough for end-to-end tests: 8x8 offline digits, a
2-level UNet."""

import ml_collections

from research.config import adam, base_config, parse_arg

SAMPLERS = {"ddpm": "ddim", "flow": "heun", "edm": "heun", "meanflow": "meanflow"}


def get_config(arg=None):
  arg = parse_arg(arg, objective="flow", conditional=False)
  c = base_config()
  c.batch_size = 32
  c.task = ml_collections.ConfigDict(
    {
      "name": "diffusion",
      "objective": arg.objective,
      "conditional": arg.conditional,
      "likelihood_steps": 4 if arg.objective == "flow" else 0,
    }
  )
  c.model.update(
    {
      "name": "ddpm_unet",
      "ch": 16,
      "ch_mult": (1, 2),
      "num_res_blocks": 1,
      "attn_resolutions": (),
      "dropout": 0.0,
      "num_groups": 8,
      "num_times": 2 if arg.objective == "meanflow" else 1,
      "dtype": "float32",
    }
  )
  c.data.name = "offline_digits"
  c.data.shuffle_buffer = 512
  c.optim.model = adam(2e-3, warmup_steps=20, grad_clip_norm=1.0)
  c.train.num_steps = 10
  c.train.log_every = 10
  c.train.sample_every = 0
  c.train.checkpoint_every = 100
  c.train.ema_decay = 0.0
  c.sample.update(
    {
      "num_samples": 16,
      "grid_size": 16,
      "sampler": SAMPLERS[arg.objective],
      "steps": 4,
      "guidance_scale": 0.0,
    }
  )
  if arg.objective == "ddpm":
    c.task.eval_timesteps = 8
    c.sample.update({"eta": 0.0, "variance": "beta", "clip_x0": True})
  c.eval.batch_size = 128
  return c
