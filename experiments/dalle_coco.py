r"""DALL-E stage 2 at the paper's layout on COCO captions, ~120M parameters: for GPU / TPU users.

The stream is the paper's 1,280 positions: 256 caption tokens (BPE, 16,384 ids + 256 per-position
padding ids) and a 32x32 grid of dVAE tokens (a vocabulary of 8,192: a 256x256 dVAE with f = 8 as
in the paper). Needs the prepared TFDS `coco_captions` (``python -m research.data.prepare
--name=coco_captions`` on a machine with internet) and a trained dVAE of 256x256 images:

  python -m research.main --config=experiments/dalle_coco.py:dvae=<dVAE workdir> --workdir=<dir>
  python -m benchmarks.dalle --config=experiments/dalle_coco.py --batch_size=32 --steps=10

Model: 12 layers, d 768, 12 heads (~85M in the blocks, ~120M with the embeddings and the two heads),
the paper's row / column / convolutional (11x11) masks, bf16 compute with fp32 parameters, no remat
(``remat=true`` to trade compute for memory). Training follows appendix B.1: AdamW (0.9, 0.96),
eps 1e-8, weight decay 4.5e-2, gradient clipping at 4, 5,000 warm-up steps to 4.5e-4 (then a cosine
decay instead of the paper's halving on plateaus), EMA 0.999. Batch 256 (the paper: 1,024).

Arguments: ``dvae=<workdir>``, ``attention=dense``, ``remat=true``, ``fsdp=<n>`` (parameter sharding
over n devices of the mesh).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dvae="", attention="sparse", remat=False, fsdp=1)
  c = base_config()
  c.seed = 0
  c.batch_size = 256
  c.mesh.fsdp = arg.fsdp
  c.task.name = "dalle"
  c.task.image_tokenizer = "dvae"
  c.task.dvae_workdir = arg.dvae
  c.task.patch_size = 8  # tokenizer=patches only (benchmarks)
  c.task.patch_levels = 8192
  c.task.caption_dropout = 0.1
  c.model.update(
    {
      "name": "dalle_transformer",
      "width": 768,
      "depth": 12,
      "num_heads": 12,
      "mlp_ratio": 4,
      "attention": arg.attention,
      "conv_kernel": 11,
      "conv_wrap": True,
      "dtype": "bfloat16",
      "param_dtype": "float32",
      "remat": arg.remat,
    }
  )
  c.data.name = "coco_captions"
  c.data.split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 256
  c.data.shuffle_buffer = 10_000
  c.data.text_length = 256
  c.data.text_tokenizer = ""  # "" = <workdir>/text_tokenizer.json, trained on first use
  c.data.text_vocab_size = 16_384
  c.data.text_bos = False
  c.data.caption_key = "captions/text"
  c.optim.model = adam(
    4.5e-4,
    name="adamw",
    b2=0.96,
    weight_decay=4.5e-2,
    grad_clip_norm=4.0,
    schedule="cosine",
    warmup_steps=5_000,
    end_lr_factor=0.01,
  )
  c.train.num_steps = 200_000
  c.train.log_every = 200
  c.train.sample_every = 10_000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 2_000
  c.train.ema_decay = 0.999
  c.sample.num_samples = 32
  c.sample.grid_size = 16
  c.sample.captions = (
    "a bowl of fruit on a wooden table",
    "a red double decker bus driving down a street",
    "a cat sitting on a laptop keyboard",
    "a surfer riding a large wave",
  )
  c.sample.captions_file = ""
  c.sample.per_caption = 4
  c.sample.temperature = 1.0
  c.sample.top_k = 0
  c.sample.top_p = 1.0
  c.sample.guidance_scale = 1.0
  c.sample.rerank_workdir = ""
  c.sample.candidates = 32
  c.eval.batch_size = 256
  return c
