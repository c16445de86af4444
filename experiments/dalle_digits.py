r"""DALL-E stage 2 on captioned digits: a text-and-image transformer over a trained dVAE's tokens.

Stage 1 first (a dVAE; the one of dvae_mnist.py is fully convolutional, so its f=4 encoder turns the
32x64 canvases into an 8x16 grid), then this:

  python -m research.main --config=experiments/dvae_mnist.py:runlocal --workdir=workdirs/dvae_mnist
  python -m research.main --config=experiments/dalle_digits.py:runlocal,dvae=workdirs/dvae_mnist \
      --workdir=workdirs/dalle_digits
  python -m research.main --config=experiments/dalle_digits.py:runlocal,dvae=workdirs/dvae_mnist \
      --workdir=workdirs/dalle_digits --mode=eval     # held-out caption / image NLL per token
  python -m research.main --config=experiments/dalle_digits.py:runlocal,dvae=workdirs/dvae_mnist \
      --workdir=workdirs/dalle_digits --mode=sample   # samples.npz, captions.png

Reranking with a CLIP model of the project (experiments/clip_digits.py): add
``--config.sample.rerank_workdir=workdirs/clip_digits --config.sample.candidates=8``. Guidance
(dalle-mini's super conditioning): ``--config.sample.guidance_scale=3``. Caption-digit agreement in
eval is judged by the digits classifier (trained once into its cache the first time; see
experiments/digits_classifier.py); ``--config.evals.caption_digits.judge=`` turns it off.

Measured (runlocal, 600 steps, ~4 min here, over dvae_mnist:runlocal's 3,000-step dVAE; eval on
256 held-out captions, 682 digit cells; chance agreement 0.10, real canvases 0.98): agreement 0.21 /
FID 60 at t = 1; 0.50 / 51 reranking 8 candidates with CLIP; 0.46 / 45 with guidance 3 and top-k
16; 0.71 / 34 with both (FID in the digits classifier's features). Held-out NLL per token: image
1.91, caption 0.27. With --config.train.num_steps=2000 (~14 min): 0.50 / 31 at t = 1, 0.78 / 18.5
with guidance and top-k, 0.82 / 20.8 reranked at t = 1, 0.86 / 16.6 with all three; image NLL 1.63.

Arguments: ``runlocal`` (a CPU run of minutes), ``dvae=<dVAE workdir>`` (default
workdirs/dvae_mnist), ``tokenizer=patches`` (a parameter-free stand-in for the dVAE: mean grey of
4x4 patches in 16 levels; for smoke tests, not the paper), ``attention=dense`` (causal attention
instead of the paper's row / column / convolutional masks).

Paper settings kept (Ramesh et al. 2021, appendix B.1): the stream layout, the per-position
padding tokens, the masks and their layer cycle, the 1/8 : 7/8 loss split, AdamW (0.9, 0.96) with
weight decay 4.5e-2 and gradient clipping at 4, EMA 0.999. Scaled down: 8 layers, d 256 (runlocal
4 layers, d 128), 24 caption tokens, a 5x5 convolutional kernel on the 8x16 grid (11x11 on 32x32 in
the paper), lr 3e-4 with warm-up and cosine decay (the paper halves 4.5e-4 on plateaus).
"""

from research.config import adam, base_config, parse_arg

CAPTIONS = (
  "a handwritten seven",
  "the digit two on the right",
  "a three to the left of a five",
  "a one to the right of a four",
  "the digits zero and five",  # a held-out pair: never in training
  "an eight on the left and a six on the right",
)


def get_config(arg=None):
  arg = parse_arg(
    arg, runlocal=False, dvae="workdirs/dvae_mnist", tokenizer="dvae", attention="sparse"
  )
  c = base_config()
  c.seed = 0
  c.batch_size = 64
  c.task.name = "dalle"
  c.task.image_tokenizer = arg.tokenizer
  c.task.dvae_workdir = arg.dvae
  c.task.patch_size = 4  # tokenizer=patches only
  c.task.patch_levels = 16
  c.task.caption_dropout = 0.1  # for classifier-free guidance (dalle-mini trains with 0.1 too)
  c.model.update(
    {
      "name": "dalle_transformer",
      "width": 256,
      "depth": 8,
      "num_heads": 8,
      "mlp_ratio": 4,
      "attention": arg.attention,
      "conv_kernel": 5,
      "conv_wrap": True,
      "dtype": "float32",
      "param_dtype": "float32",
      "remat": False,
    }
  )
  c.data.name = "offline_captioned_digits"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 20_000
  c.data.text_length = 24  # the longest caption is 17 BPE tokens
  c.data.text_tokenizer = ""  # "" = <workdir>/text_tokenizer.json, trained on first use
  c.data.text_vocab_size = 512
  c.data.text_bos = False  # the transformer has its own BOS
  c.data.caption_key = "caption"
  c.optim.model = adam(
    3e-4,
    name="adamw",
    b2=0.96,
    weight_decay=4.5e-2,
    grad_clip_norm=4.0,
    schedule="cosine",
    warmup_steps=500,
    end_lr_factor=0.1,
  )
  c.train.num_steps = 10_000
  c.train.log_every = 100
  c.train.sample_every = 2_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 1_000
  c.train.ema_decay = 0.999
  c.sample.num_samples = 64
  c.sample.grid_size = 16
  c.sample.captions = CAPTIONS
  c.sample.captions_file = ""  # one caption per line; overrides sample.captions
  c.sample.per_caption = 8
  c.sample.temperature = 1.0  # the paper samples at t = 1
  c.sample.top_k = 0
  c.sample.top_p = 1.0
  c.sample.guidance_scale = 1.0  # 1 = no guidance
  c.sample.rerank_workdir = ""  # a clip_digits workdir
  c.sample.candidates = 8
  c.eval.batch_size = 250
  # Caption-digit agreement and cell FID in eval, judged by a feature network: the digits
  # classifier (trained once into its cache when missing, see research/eval/classifier_cache.py);
  # "" turns the judge off.
  c.evals.caption_digits = {"judge": "digits_classifier", "num_captions": 256}

  if arg.runlocal:
    c.batch_size = 32
    c.model.update({"width": 128, "depth": 4, "num_heads": 4})
    c.train.num_steps = 600
    c.train.log_every = 50
    c.train.sample_every = 0
    c.train.eval_every = 0
    c.train.checkpoint_every = 200
    c.optim.model.learning_rate = 1e-3
    c.optim.model.warmup_steps = 50
    c.train.ema_decay = 0.99
    c.sample.per_caption = 4
    c.sample.num_samples = 24
    c.eval.batch_size = 200
  return c
