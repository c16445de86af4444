r"""DALL-E's discrete VAE (stage 1) on CIFAR-10 (TFDS ``cifar10``), for a GPU or TPU.

Needs the prepared TFDS data: ``python -m research.data.prepare --name=cifar10 --data_dir=$DIR``.

  python -m research.main --config=experiments/dvae_cifar10.py --workdir=workdirs/dvae_cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR
  python -m research.tokenize --workdir=workdirs/dvae_cifar10 --split=train --out=<dir>

The paper's architecture (n_hid 256, 2 resblocks per group, n_init 128, max-pool, post-gain 1/64
with 4 groups) at 32x32 with 3 groups: downsampling 4, an 8x8 grid (the paper: 8, a 32x32 grid at
256x256; 8 would leave 4x4 codes here). Vocabulary 8192 as the paper; codebook usage is in eval.json.
Kept from the paper (appendix A.2): beta 0 -> 6.6 cosine over 5,000 updates, tau 1 -> 1/16 cosine
over 150,000, lr 1e-4 -> 1.25e-6 cosine over 1.2M, AdamW (0.9, 0.999) wd 1e-4, EMA 0.999, batch 512.
Departures: 3 groups (above), 1.2M updates instead of 3M (the run ends where the lr decay does: 50,000
images give ~12,000 epochs by then), random flips only (no crop/resize augmentation at 32x32).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  c.batch_size = 512
  c.task.name = "dvae"
  c.task.kl_weight = 6.6
  c.task.kl_warmup_steps = 5_000
  c.task.tau_start = 1.0
  c.task.tau_end = 1.0 / 16.0
  c.task.tau_steps = 150_000
  c.task.eps = 0.1
  c.model.update(
    {"name": "dvae", "vocab_size": 8192, "n_hid": 256, "n_blk_per_group": 2, "num_groups": 3}
  )
  c.model.n_init = 128
  c.model.dtype = "bfloat16"  # logits and decoder-input convs stay float32 (openai/DALL-E)
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.data.shuffle_buffer = 50_000
  c.optim.model = adam(
    1e-4,
    name="adamw",
    weight_decay=1e-4,
    schedule="cosine",
    decay_steps=1_200_000,
    end_lr_factor=1.25e-6 / 1e-4,
  )
  c.train.num_steps = 1_200_000
  c.train.log_every = 500
  c.train.sample_every = 0  # training grids would be uniform-prior decodes; see --mode=sample
  c.train.eval_every = 50_000
  c.train.checkpoint_every = 10_000
  c.train.ema_decay = 0.999
  c.eval.batch_size = 500

  if arg.runlocal:  # a smoke run on CPU: tiny network, schedules scaled to 300 steps
    c.batch_size = 32
    c.model.update({"vocab_size": 256, "n_hid": 16, "n_blk_per_group": 1, "n_init": 16})
    c.model.dtype = "float32"
    c.data.shuffle_buffer = 1_000
    c.train.num_steps = 300
    c.task.kl_warmup_steps = 15
    c.task.tau_steps = 150
    c.optim.model.learning_rate = 1e-3
    c.optim.model.decay_steps = 300
    c.train.log_every = 50
    c.train.eval_every = 300
    c.train.checkpoint_every = 100
    c.train.ema_decay = 0.99
    c.eval.batch_size = 64
  return c
