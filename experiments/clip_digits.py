r"""CLIP-style contrastive image-text model on captioned digits: DALL-E's reranker (Radford et al. 2021).

Symmetric InfoNCE over the batch, learned temperature (init 1/0.07, scale clipped at 100), a conv
image tower that keeps positions and a causal text transformer over the BPE ids of the captions
(the tokenizer is trained on the training captions into <workdir>/text_tokenizer.json on first use).

  python -m research.main --config=experiments/clip_digits.py:runlocal --workdir=workdirs/clip_digits
  python -m research.main --config=experiments/clip_digits.py:runlocal --workdir=workdirs/clip_digits \
      --mode=eval
  python -m research.main --config=experiments/clip_digits.py --workdir=workdirs/clip_digits_full

Eval writes held-out in-batch retrieval top-1 (image->text, text->image; exact pair and same digit
labels, also on the held-out digit pairs alone) and zero-shot digit accuracy per cell. DALL-E loads
the trained model with `research.train.restore.load_trained(workdir)`.

Arguments: ``runlocal`` (a few CPU minutes).
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  c.seed = 0
  c.batch_size = 256
  c.task.name = "clip"
  c.evals.clip_digits = {}  # label-aware retrieval, held-out pairs, zero-shot digits
  c.model.update(
    {
      "name": "clip",
      "embed_dim": 128,
      "image_channels": (32, 64, 128),
      "image_width": 256,
      "text_width": 128,
      "text_depth": 2,
      "text_heads": 4,
      "dtype": "float32",
    }
  )
  c.data.name = "offline_captioned_digits"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 20_000
  c.data.text_length = 24  # the longest caption is 12 BPE tokens (+ <bos>): room for others
  c.data.text_tokenizer = ""  # "" = <workdir>/text_tokenizer.json, trained on first use
  c.data.text_vocab_size = 512
  c.data.text_bos = True
  c.data.caption_key = "caption"
  # CLIP section 2.5 / appendix: AdamW, decoupled weight decay, beta2 0.98, cosine schedule.
  c.optim.model = adam(
    1e-3,
    name="adamw",
    b2=0.98,
    weight_decay=0.1,
    schedule="cosine",
    warmup_steps=200,
    end_lr_factor=0.1,
  )
  c.train.num_steps = 5_000
  c.train.log_every = 100
  c.train.sample_every = 0  # nothing to sample: CLIP scores
  c.train.eval_every = 1_000
  c.train.checkpoint_every = 1_000
  c.train.ema_decay = 0.0
  c.eval.batch_size = 256

  if arg.runlocal:
    c.batch_size = 128
    c.train.num_steps = 400
    c.train.log_every = 50
    c.train.eval_every = 0
    c.train.checkpoint_every = 200
    c.optim.model.warmup_steps = 50
    c.model.image_channels = (16, 32, 64)
    c.model.image_width = 128
    c.model.text_width = 64
    c.model.embed_dim = 64
  return c
