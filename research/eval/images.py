"""Image grids as PNG (lossless: samples are never judged through JPEG artefacts)."""

from __future__ import annotations

import io
import math

import numpy as np
from etils import epath


def to_uint8(x: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
  """Float images in [low, high] -> uint8 [0, 255], rounding to the nearest level."""
  x = (np.asarray(x, np.float64) - low) / (high - low)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y : y + h, x : x + w] = images[i]
  return out


def png_bytes(image: np.ndarray) -> bytes:
  from PIL import Image

  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def save_png(image: np.ndarray, path: str | epath.Path, scale: int = 1) -> None:
  """Writes uint8 [H, W, C] as PNG (local or gs:// path), upscaled by `scale` for small digits."""
  image = np.asarray(image)
  if scale > 1:
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png_bytes(image))


def save_grid(images: np.ndarray, path: str | epath.Path, ncols: int | None = None) -> None:
  g = grid(images, ncols)
  save_png(g, path, scale=max(1, 256 // max(g.shape[:2])))
