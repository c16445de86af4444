"""Stable Diffusion's KL autoencoder (kl-f8; Rombach et al. 2022, 2112.10752) as diffusers builds it.

`AutoencoderKL` maps NHWC images in [-1, 1] [B, H, W, in_channels] to a diagonal-Gaussian posterior
(mean, logvar) [B, H/f, W/f, latent_channels], f = 2**(len(block_out_channels) - 1), and latents
back to images. It follows diffusers' `AutoencoderKL` (`models/autoencoders/vae.py` Encoder and
Decoder) layer for layer, so that `research.models.sd_vae_weights` converts its state dict with a
plain renaming: every flax submodule is named after the diffusers module path, with ``.{i}`` list
indices written ``_{i}`` (``encoder.down_blocks.0.resnets.1.conv1`` -> ``encoder/down_blocks_0/
resnets_1/conv1``). With `SD_VAE_CONFIG` it has diffusers' 83,653,863 parameters.

Faithful details (all from diffusers / the LDM `model.py`): GroupNorm eps 1e-6 everywhere; the
Downsample pads (0, 1) on H and W and applies a 3x3 stride-2 VALID conv; the Upsample is nearest x2
then a 3x3 conv; the mid block is resnet, single-head self-attention over all channels (scale
1/sqrt(C), with its own GroupNorm and a residual), resnet; ResnetBlocks have a 1x1 `conv_shortcut`
when the channel count changes; the decoder's up blocks have ``layers_per_block + 1`` resnets;
`quant_conv` and `post_quant_conv` are 1x1; logvar is clamped to [-30, 20]. Latents fed to a
diffusion model are usually ``z * SCALE_FACTOR``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.registry import MODELS

SCALE_FACTOR = 0.18215  # SD's latent scale (1 / 5.49), diffusers `scaling_factor`
SD_VAE_CONFIG = dict(
  in_channels=3,
  out_channels=3,
  block_out_channels=(128, 256, 512, 512),
  layers_per_block=2,
  latent_channels=4,
  norm_num_groups=32,
)
SD_VAE_PARAM_COUNT = 83_653_863  # diffusers AutoencoderKL(**SD_VAE_CONFIG), counted with torch
LOGVAR_RANGE = (-30.0, 20.0)  # LDM distributions.py DiagonalGaussianDistribution


def _conv3(features: int, name: str, strides: int = 1, padding="SAME_TORCH") -> nn.Conv:
  """A 3x3 conv with torch's padding=1 (or `padding` as given)."""
  pad = ((1, 1), (1, 1)) if padding == "SAME_TORCH" else padding
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding=pad, name=name)


def _norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
  # Two-pass variance, like torch's group_norm (flax's default E[x^2] - E[x]^2 loses digits).
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  """diffusers `ResnetBlock2D` without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1 x)))))."""

  out_channels: int
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Cin] -> [B, H, W, Cout]
    h = nn.silu(_norm(self.groups, self.eps, "norm1")(x))
    h = _conv3(self.out_channels, "conv1")(h)
    h = nn.silu(_norm(self.groups, self.eps, "norm2")(h))
    h = _conv3(self.out_channels, "conv2")(h)  # dropout is 0 in the VAE
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """Single-head self-attention over the H*W positions with C channels (diffusers `Attention`)."""

  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> same
    b, hgt, wid, c = x.shape
    h = _norm(self.groups, self.eps, "group_norm")(x).reshape(b, hgt * wid, c)
    q = nn.Dense(c, name="to_q")(h)  # [B, N, C]
    k = nn.Dense(c, name="to_k")(h)
    v = nn.Dense(c, name="to_v")(h)
    logits = jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(jnp.float32(c))
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    h = jnp.einsum("bqk,bkc->bqc", w, v)
    h = nn.Dense(c, name="to_out_0")(h)
    return x + h.reshape(b, hgt, wid, c)


class MidBlock(nn.Module):
  """diffusers `UNetMidBlock2D` without a time embedding: resnet, attention, resnet."""

  channels: int
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResnetBlock(self.channels, self.groups, self.eps, name="resnets_0")(x)
    x = Attention(self.groups, self.eps, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, self.eps, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad (0, 1) on H and W, then a 3x3 stride-2 VALID conv (diffusers `Downsample2D`, padding=0)."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H/2, W/2, C]
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv3(self.channels, "conv", strides=2, padding="VALID")(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv (diffusers `Upsample2D`)."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, 2H, 2W, C]
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv3(self.channels, "conv")(x)


class UpDownBlock(nn.Module):
  """`DownEncoderBlock2D` (`upsample` False) or `UpDecoderBlock2D` (True): resnets, then a resample."""

  out_channels: int
  num_layers: int
  resample: bool
  upsample: bool
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.eps, name=f"resnets_{j}")(x)
    if self.resample:
      if self.upsample:
        x = Upsample(self.out_channels, name="upsamplers_0")(x)
      else:
        x = Downsample(self.out_channels, name="downsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Image [B, H, W, Cin] -> moments [B, H/f, W/f, 2 * latent_channels] (mean, then logvar)."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chans = tuple(self.block_out_channels)
    x = _conv3(chans[0], "conv_in")(x)
    for i, c in enumerate(chans):
      last = i == len(chans) - 1
      x = UpDownBlock(
        c, self.layers_per_block, not last, False, self.groups, self.eps, name=f"down_blocks_{i}"
      )(x)
    x = MidBlock(chans[-1], self.groups, self.eps, name="mid_block")(x)
    x = nn.silu(_norm(self.groups, self.eps, "conv_norm_out")(x))
    return _conv3(2 * self.latent_channels, "conv_out")(x)  # double_z


class Decoder(nn.Module):
  """Latent [B, h, w, latent_channels] -> image [B, h*f, w*f, out_channels]."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    rev = tuple(reversed(tuple(self.block_out_channels)))
    x = _conv3(rev[0], "conv_in")(z)
    x = MidBlock(rev[0], self.groups, self.eps, name="mid_block")(x)
    for i, c in enumerate(rev):
      last = i == len(rev) - 1
      x = UpDownBlock(
        c, self.layers_per_block + 1, not last, True, self.groups, self.eps, name=f"up_blocks_{i}"
      )(x)
    x = nn.silu(_norm(self.groups, self.eps, "conv_norm_out")(x))
    return _conv3(self.out_channels, "conv_out")(x)


@MODELS.register("autoencoder_kl")
class AutoencoderKL(nn.Module):
  """diffusers' `AutoencoderKL` in linen: `encode`, `decode`, and `__call__` (reconstruction).

  Images are NHWC in [-1, 1]. `encode` returns (mean, logvar) of the diagonal-Gaussian posterior;
  `__call__(x)` decodes the mean (diffusers' ``sample_posterior=False``), `__call__(x, rng)` a
  sample mean + exp(logvar / 2) * eps. Parameters are float32; so is the computation.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  eps: float = 1e-6

  def setup(self):
    g, e = self.norm_num_groups, self.eps
    chans = tuple(self.block_out_channels)
    self.encoder = Encoder(chans, self.layers_per_block, self.latent_channels, g, e)
    self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1))
    self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1))
    self.decoder = Decoder(chans, self.layers_per_block, self.out_channels, g, e)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, Cin] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]."""
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)  # diffusers chunks dim=1: mean first
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """[B, h, w, latent_channels] (unscaled latents) -> [B, h*f, w*f, Cout], roughly in [-1, 1]."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    mean, logvar = self.encode(x)
    z = mean
    if rng is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(z)


def param_shapes(config: dict | None = None) -> dict:
  """The nested params' ShapeDtypeStructs for `AutoencoderKL(**config)`, without materialising."""
  cfg = dict(SD_VAE_CONFIG if config is None else config)
  model = AutoencoderKL(**cfg)
  f = 2 ** (len(cfg["block_out_channels"]) - 1)
  x = jax.ShapeDtypeStruct((1, f, f, cfg.get("in_channels", 3)), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]
