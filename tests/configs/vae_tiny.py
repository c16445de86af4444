"""A VAE small enough for end-to-end tests: 8x8 offline digits, a few steps, frequent saves."""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, steps=12, model="conv_vae")
  c = base_config()
  c.batch_size = 32
  c.task.name = "vae"
  c.task.likelihood = "bernoulli"
  c.task.iwae_k = 8
  c.task.iwae_chunk = 4
  if arg.model == "conv_vae":
    c.model.update({"name": "conv_vae", "latent_dim": 4, "channels": (8, 16), "hidden": 32})
  else:
    c.model.update({"name": "mlp_vae", "latent_dim": 4, "hidden": 32})
  c.model.dtype = "float32"
  c.data.name = "offline_digits"
  c.data.shuffle_buffer = 256
  c.optim.model = adam(3e-3)
  c.train.num_steps = arg.steps
  c.train.log_every = 2
  c.train.sample_every = 0
  c.train.checkpoint_every = 4
  c.train.ema_decay = 0.9
  c.sample.num_samples = 16
  c.sample.grid_size = 16
  c.eval.batch_size = 64
  return c
