"""Pieces of the DALL-E task that are not the loss: image tokenizers and caption strips.

Image tokenizers map uint8 images [B, H, W, C] to int32 tokens [B, h, w] and back, given their
(frozen) variables:

- `DVAETokens`: a trained stage-1 dVAE (`research.tasks.dvae.DVAETask`; argmax of the encoder
  logits, no Gumbel noise, as the paper's stage 2; the decoder's reconstruction for pixels);
- `PatchTokens`: a parameter-free stand-in (each f x f patch's mean grey level quantised to K
  levels), for tests and smoke runs before a dVAE is trained. It is not the paper's tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PatchTokens:
  """Stand-in tokenizer: mean grey level of each patch x patch cell, quantised to `levels`."""

  image_shape: tuple[int, int, int]
  patch: int = 4
  levels: int = 16

  @property
  def vocab_size(self) -> int:
    return self.levels

  @property
  def grid_shape(self) -> tuple[int, int]:
    return self.image_shape[0] // self.patch, self.image_shape[1] // self.patch

  def encode_tokens(self, variables: Any, images: jax.Array) -> jax.Array:
    b, hh, ww, c = images.shape
    h, w = self.grid_shape
    x = images.astype(jnp.float32).reshape(b, h, self.patch, w, self.patch, c).mean((2, 4, 5))
    return jnp.clip(jnp.floor(x / 256.0 * self.levels), 0, self.levels - 1).astype(jnp.int32)

  def decode_tokens(self, variables: Any, tokens: jax.Array) -> jax.Array:
    grey = (tokens.astype(jnp.float32) + 0.5) * (255.0 / self.levels)  # [B, h, w]
    grey = jnp.repeat(jnp.repeat(grey, self.patch, 1), self.patch, 2)
    img = jnp.broadcast_to(grey[..., None], (*grey.shape, self.image_shape[2]))
    return jnp.clip(jnp.round(img), 0, 255).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class DVAETokens:
  """The trained stage-1 dVAE (`research.tasks.dvae.DVAETask`) as the image tokenizer."""

  dvae: Any  # DVAETask

  @property
  def vocab_size(self) -> int:
    return int(self.dvae.vocab_size)

  @property
  def grid_shape(self) -> tuple[int, int]:
    return tuple(self.dvae.grid_shape)

  def encode_tokens(self, variables: Any, images: jax.Array) -> jax.Array:
    return self.dvae.encode_tokens(variables, images)

  def decode_tokens(self, variables: Any, tokens: jax.Array) -> jax.Array:
    return self.dvae.decode_tokens(variables, tokens)


def caption_strips(captions: list[str], width: int, height: int = 12) -> np.ndarray:
  """uint8 [C, height, width, 1]: each caption drawn in black on white with PIL's default font."""
  from PIL import Image, ImageDraw

  strips = []
  for text in captions:
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    draw.text((1, 0), text, fill=0)
    strips.append(np.asarray(img, np.uint8)[..., None])
  return np.stack(strips) if strips else np.zeros((0, height, width, 1), np.uint8)
