r"""Convolutional VAE on CIFAR-10 (TFDS ``cifar10``) with a discretized-logistic decoder, in bits/dim.

Needs the prepared TFDS data (no download at run time): once, on a machine with internet,
``python -m research.data.prepare --name=cifar10 --data_dir=$TFDS_DATA_DIR``, then

  python -m research.main --config=experiments/vae_cifar10.py --workdir=workdirs/vae_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m research.main --config=experiments/vae_cifar10.py:runlocal --workdir=/tmp/vae_c10 \
      --config.data.data_dir=$TFDS_DATA_DIR

A VAE of this size lands around 4.5-5 bits/dim on CIFAR-10 (far from flows/diffusion at ~3): the
diagonal-Gaussian posterior and a factorised decoder are the classic limitation.
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  c.batch_size = 128
  c.task.name = "vae"
  c.task.likelihood = "discretized_logistic"
  c.task.iwae_k = 1000
  c.task.iwae_chunk = 50
  c.model.update(
    {"name": "conv_vae", "latent_dim": 128, "channels": (64, 128, 256), "hidden": 1024}
  )
  c.model.dtype = "float32"
  c.data.name = "cifar10"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.random_flip = True
  c.data.shuffle_buffer = 50_000
  c.optim.model = adam(
    1e-3, schedule="cosine", warmup_steps=1_000, end_lr_factor=0.01, grad_clip_norm=100.0
  )
  c.train.num_steps = 100_000
  c.train.log_every = 200
  c.train.sample_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9995
  c.eval.batch_size = 512

  if arg.runlocal:
    c.batch_size = 32
    c.model.update({"latent_dim": 32, "channels": (16, 32, 64), "hidden": 128})
    c.data.shuffle_buffer = 1_000
    c.train.num_steps = 300
    c.train.log_every = 50
    c.train.sample_every = 100
    c.train.checkpoint_every = 100
    c.optim.model.warmup_steps = 50
    c.train.ema_decay = 0.99
    c.task.iwae_k = 16
    c.task.iwae_chunk = 16
    c.eval.batch_size = 64
  return c
