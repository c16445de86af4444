"""The DALL-E discrete VAE's encoder and decoder (Ramesh et al. 2021, section 2.1 and appendix A.1;
`dall_e/encoder.py` and `dall_e/decoder.py` of openai/DALL-E), as a linen module with typed fields.

Encoder: 7x7 conv to n_hid, `num_groups` groups of `n_blk_per_group` bottleneck resblocks of widths
n_hid * (1, 2, 4, 8, ...), 2x2 max-pooling after every group but the last, then ReLU and a 1x1 conv
to `vocab_size` logits. Decoder: a 1x1 conv from the (soft) one-hot [.., K] to `n_init`, groups of
widths n_hid * (..., 8, 4, 2, 1) with nearest x2 upsampling after every group but the last, then ReLU
and a 1x1 conv to 2C outputs (mu and ln b of the logit-Laplace per channel). The paper's model:
256x256x3, n_hid 256, 2 blocks per group, 4 groups (downsampling 8: a 32x32 grid), K 8192, n_init 128.

Resblocks multiply the residual path by post_gain = 1 / n_layers**2 (n_layers = all blocks of the
network) "for stable training at init"; the identity path is a 1x1 conv where the width changes.
Convs are initialised N(0, 1 / (n_in * kw**2)) with zero bias, as openai/DALL-E. With
dtype=bfloat16 the encoder's logits conv and the decoder's input conv stay in float32 (openai/DALL-E
`use_float16=False` for those two); parameters are always float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import UserError
from research.registry import MODELS

# N(0, 1 / fan_in) with fan_in = n_in * kw * kw: openai/DALL-E `Conv2d` (std 1/sqrt(n_in kw^2)).
_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def _dtype(name: str) -> jnp.dtype:
  if name not in ("float32", "bfloat16", "float16"):
    raise UserError(f"unknown dtype {name!r} in config.model.dtype; use float32 or bfloat16")
  return jnp.dtype(name)


def _conv(features: int, kw: int, dtype: jnp.dtype, name: str | None = None) -> nn.Conv:
  return nn.Conv(
    features, (kw, kw), padding="SAME", dtype=dtype, kernel_init=_INIT, name=name
  )  # SAME = openai/DALL-E's padding (kw - 1) // 2 for odd kw


class ResBlock(nn.Module):
  """id_path(x) + post_gain * res_path(x) with a 4x-narrower bottleneck (openai/DALL-E).

  Encoder blocks: ReLU-conv3-ReLU-conv3-ReLU-conv3-ReLU-conv1; decoder blocks start with the 1x1
  conv instead (ReLU-conv1-ReLU-conv3-ReLU-conv3-ReLU-conv3).
  """

  n_out: int
  post_gain: float
  decoder: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, n_in] -> [B, H, W, n_out]
    n_hid = self.n_out // 4
    kws = (1, 3, 3, 3) if self.decoder else (3, 3, 3, 1)
    widths = (n_hid, n_hid, n_hid, self.n_out)
    h = x
    for i, (kw, width) in enumerate(zip(kws, widths, strict=True)):
      h = _conv(width, kw, self.dtype, name=f"conv_{i + 1}")(nn.relu(h))
    skip = x if x.shape[-1] == self.n_out else _conv(self.n_out, 1, self.dtype, name="id_path")(x)
    return skip + self.post_gain * h


def _max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]. The same as nn.max_pool, written
  as a reshape and a max, whose gradient XLA:CPU runs ~4x faster than select-and-scatter."""
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


@MODELS.register("dvae")
class DiscreteVAE(nn.Module):
  """`encode(x)` -> logits [B, h, w, K]; `decode(z)` -> [B, H, W, 2C] (mu, ln b); h = H / 2**(G-1)."""

  image_shape: tuple[int, int, int]  # H, W, C (set by the task from the dataset)
  vocab_size: int = 8192
  n_hid: int = 256
  n_blk_per_group: int = 2
  num_groups: int = 4
  n_init: int = 128  # decoder width after its input conv
  dtype: str = "float32"  # compute dtype; parameters stay float32

  @property
  def downsample(self) -> int:
    return 2 ** (self.num_groups - 1)

  @property
  def grid_shape(self) -> tuple[int, int]:
    h, w, _ = self.image_shape
    return h // self.downsample, w // self.downsample

  def setup(self):
    dt = _dtype(self.dtype)
    n_layers = self.num_groups * self.n_blk_per_group  # per network
    gain = 1.0 / n_layers**2
    self.enc_in = _conv(self.n_hid, 7, dt)
    self.enc_blocks = [
      [
        ResBlock(self.n_hid * 2**g, gain, decoder=False, dtype=dt)
        for _ in range(self.n_blk_per_group)
      ]
      for g in range(self.num_groups)
    ]
    self.enc_out = _conv(self.vocab_size, 1, jnp.float32)  # the logits stay fp32
    self.dec_in = _conv(self.n_init, 1, jnp.float32)  # the soft one-hot input stays fp32
    self.dec_blocks = [
      [
        ResBlock(self.n_hid * 2**g, gain, decoder=True, dtype=dt)
        for _ in range(self.n_blk_per_group)
      ]
      for g in reversed(range(self.num_groups))
    ]
    self.dec_out = _conv(2 * self.image_shape[2], 1, dt)

  def encode(self, x: jax.Array) -> jax.Array:
    """Mapped pixels [B, H, W, C] in (0, 1) -> logits float32 [B, H/f, W/f, K]."""
    h = self.enc_in(x)
    for g, blocks in enumerate(self.enc_blocks):
      for block in blocks:
        h = block(h)
      if g < self.num_groups - 1:
        h = _max_pool2(h)  # max-pool beat avg-pool (appendix A.1)
    return self.enc_out(nn.relu(h).astype(jnp.float32)).astype(jnp.float32)

  def decode(self, z: jax.Array) -> jax.Array:
    """(Soft) one-hot codes [B, h, w, K] -> float32 [B, H, W, 2C]: mu (logit space), then ln b."""
    h = self.dec_in(z.astype(jnp.float32))
    for g, blocks in enumerate(self.dec_blocks):
      for block in blocks:
        h = block(h)
      if g < self.num_groups - 1:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
    return self.dec_out(nn.relu(h)).astype(jnp.float32)

  def __call__(self, x: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both networks, for initialisation: (logits of x, decoder output of z)."""
    return self.encode(x), self.decode(z)
