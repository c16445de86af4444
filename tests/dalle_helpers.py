"""Small DALL-E tasks for tests: a tiny transformer over a stand-in image tokenizer."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from research.models.dalle import DalleTransformer
from research.tasks import dalle_sampling
from research.tasks.dalle import DalleTask
from research.tasks.dalle_support import PatchTokens

TEXT_LENGTH = 4
BASE_VOCAB = 12  # caption ids 0..11, padding ids 12..15
IMAGE_SHAPE = (16, 16, 1)


@dataclasses.dataclass(frozen=True)
class TablePatchTokens(PatchTokens):
  """PatchTokens whose decoder reads a grey level per token from variables (a frozen collection)."""

  def decode_tokens(self, variables, tokens):
    grey = variables["table"][tokens]  # [B, h, w]
    grey = jnp.repeat(jnp.repeat(grey, self.patch, 1), self.patch, 2)[..., None]
    return jnp.clip(jnp.round(grey), 0, 255).astype(jnp.uint8)


def make_task(depth=2, width=32, attention="sparse", frozen=True, **kw):
  tokens = TablePatchTokens(IMAGE_SHAPE, patch=4, levels=8)
  model = DalleTransformer(
    text_vocab=BASE_VOCAB + TEXT_LENGTH,
    text_length=TEXT_LENGTH,
    image_vocab=tokens.vocab_size,
    grid=tokens.grid_shape,
    width=width,
    depth=depth,
    num_heads=4,
    attention=attention,
    conv_kernel=3,
  )
  table = {"table": (np.arange(8, dtype=np.float32) + 0.5) * 32.0}
  captions = ("a one", "a two")
  fields = dict(
    model=model,
    tokens=tokens,
    frozen=table if frozen else None,
    captions=captions,
    caption_ids=np.array([[1, 5, 14, 15], [2, 6, 7, 15]], np.int32),
    sampling=dalle_sampling.SamplingConfig(),
    per_caption=2,
    image_shape=IMAGE_SHAPE,
  )
  fields.update(kw)
  return DalleTask(**fields)


def synthetic_batches(n, batch=16, seed=0):
  """Captions name a class c in 0..3; the image is a c-dependent stripe pattern plus noise."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    c = rng.integers(0, 4, batch)
    text = np.stack([c + 1, c + 5, np.full(batch, 14), np.full(batch, 15)], 1).astype(np.int32)
    yy, xx = np.mgrid[:16, :16]
    base = np.stack([((xx // 4 + yy // 4 * k) % 4) * 64 for k in c]).astype(np.float32)
    img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)[..., None]
    out.append({"image": img, "text": text, "label": np.stack([c, -np.ones_like(c)], 1)})
  return out
