r"""DALL-E's discrete VAE (stage 1) on ImageNet 64x64 (TFDS ``imagenet_resized/64x64``), for a TPU.

Needs the prepared TFDS data (``python -m research.data.prepare --name=imagenet_resized/64x64
--data_dir=$DIR`` on a machine with internet), then

  launch/tpu_run.sh my-pod -- --config=experiments/dvae_imagenet64.py \
      --workdir=gs://bucket/runs/dvae_in64 --config.data.data_dir=gs://bucket/tensorflow_datasets
  python -m research.tokenize --workdir=gs://bucket/runs/dvae_in64 --split=train --out=<dir>

The paper's dVAE (Ramesh et al. 2021, appendix A): n_hid 256, 2 resblocks per group, n_init 128,
K = 8192, batch 512, beta 0 -> 6.6 cosine over 5,000 updates, tau 1 -> 1/16 cosine over 150,000,
lr 1e-4 -> 1.25e-6 cosine over 1.2M, AdamW (0.9, 0.999) wd 1e-4, EMA 0.999, bf16 compute with the
logits and decoder-input convs in fp32. Departures at 64x64: 3 groups (downsampling 4, a 16x16 grid
of 256 tokens, as dalle-mini's VQGAN grid; the paper's 4 groups would leave 8x8), 1.2M updates
instead of 3M (the end of the lr decay), and random flips in place of the paper's random
crop-and-resize augmentation.
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
  c.model.dtype = "bfloat16"
  c.data.name = "imagenet_resized/64x64"
  c.data.split = "train"
  c.data.eval_split = "validation"
  c.data.random_flip = True
  c.data.shuffle_buffer = 100_000
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
  c.eval.batch_size = 1_000

  if arg.runlocal:  # a smoke run: tiny network, schedules scaled to 300 steps
    c.batch_size = 16
    c.model.update({"vocab_size": 256, "n_hid": 16, "n_blk_per_group": 1, "n_init": 16})
    c.model.dtype = "float32"
    c.data.split = "train[:2000]"
    c.data.eval_split = "validation[:500]"
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
    c.eval.batch_size = 128
  return c
