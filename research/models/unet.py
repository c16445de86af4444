"""The DDPM U-Net (Ho, Jain, Abbeel 2020), after the official `diffusion_tf/models/unet.py`.

One module, `DDPMUNet`, maps noisy images [B, H, W, C], timestep indices [B] and optional class
labels [B] to an output [B, H, W, out_channels] float32 (the predicted noise for DDPM's L_simple).
Times may be float (flow matching feeds 1000 t, EDM ln(sigma) / 4); with `num_times=2` the model
takes two times per example [B, 2] (MeanFlow's t and t - r), one embedder each, summed.
The CIFAR-10 defaults (ch 128, ch_mult (1, 2, 2, 2), 2 blocks, attention at 16x16, dropout 0.1) give
the paper's 35.7M parameters (35,746,307, the same count as diffusers' `UNet2DModel` with the
google/ddpm-cifar10-32 config).

Faithful details: the timestep sinusoid is `[sin, cos]` with frequencies exp(-ln(1e4) i/(half - 1));
GroupNorm eps 1e-6; the 2x downsample is a stride-2 3x3 conv with TF 'SAME' padding (0 before, 1
after); the upsample is nearest x2 then a 3x3 conv; every layer is initialised variance_scaling(1,
fan_avg, uniform) with biases 0, except the last conv of each residual block, the attention output
projection and the output conv, which use scale 1e-10 (`default_init(0.)` in the official code).

Mixed precision: parameters are float32; convolutions, attention and residual blocks compute in
`dtype`; GroupNorm statistics and the softmax run in float32. The timestep MLP, the final GroupNorm
and the output conv stay float32 (small, and the output is the regression target's scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.registry import MODELS

ATTENTION_KINDS = ("dot_product", "cudnn", "einsum")


def _init(scale: float = 1.0) -> nn.initializers.Initializer:
  """`nn.default_init` of the official code: Glorot-uniform scaled by `scale`; 0 means 1e-10."""
  return nn.initializers.variance_scaling(scale or 1e-10, "fan_avg", "uniform")


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding [B] -> [B, dim] float32 (official `nn.get_timestep_embedding`).

  First half sin, second half cos, frequencies exp(-ln(10000) * i / (half - 1)), i = 0..half-1;
  an odd `dim` is zero-padded. (ADM/DiT use [cos, sin] and / half instead.)
  """
  half = dim // 2
  # Frequencies in float64, then cast (the official code builds them in float32).
  freqs = np.exp(-math.log(10000.0) / (half - 1) * np.arange(half, dtype=np.float64))
  args = t.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]  # [B, half]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)  # [B, 2 * half]
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _norm(num_groups: int, dtype: Any, name: str) -> nn.GroupNorm:
  # Flax reduces in float32 (force_float32_reductions), then casts the output to `dtype`.
  # eps 1e-6 = tf.contrib.layers.group_norm's default used by the official code.
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype, name=name)


def _conv(features: int, dtype: Any, name: str, scale: float = 1.0, stride: int = 1) -> nn.Conv:
  return nn.Conv(
    features,
    (3, 3),
    strides=(stride, stride),
    padding="SAME",  # TF 'SAME': for stride 2 on even sizes, pad 0 before and 1 after
    dtype=dtype,
    kernel_init=_init(scale),
    name=name,
  )


def _nin(features: int, dtype: Any, name: str, scale: float = 1.0) -> nn.Dense:
  """The official `nin`: a 1x1 conv, i.e. a Dense over the channel axis."""
  return nn.Dense(features, dtype=dtype, kernel_init=_init(scale), name=name)


class ResBlock(nn.Module):
  """GN -> swish -> conv3x3 -> + Dense(swish(temb)) -> GN -> swish -> dropout -> conv3x3 (1e-10)."""

  out_ch: int
  dropout: float
  num_groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb_act: jax.Array, deterministic: bool) -> jax.Array:
    # x: [B, H, W, C_in]; temb_act: [B, 4 ch] = swish(temb), already in `dtype`.
    h = nn.swish(_norm(self.num_groups, self.dtype, "norm1")(x))
    h = _conv(self.out_ch, self.dtype, "conv1")(h)
    h = h + _nin(self.out_ch, self.dtype, "temb_proj")(temb_act)[:, None, None, :]
    h = nn.swish(_norm(self.num_groups, self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = _conv(self.out_ch, self.dtype, "conv2", scale=0.0)(h)
    if x.shape[-1] != self.out_ch:
      x = _nin(self.out_ch, self.dtype, "nin_shortcut")(x)
    return x + h  # [B, H, W, out_ch]


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions, scale C^-1/2, zero-init output, residual."""

  num_groups: int
  dtype: Any
  attention: str = "dot_product"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    h = _norm(self.num_groups, self.dtype, "norm")(x)
    # [B, T, 1, C]: T = H*W tokens, one head of width C (the layout dot_product_attention takes).
    q, k, v = (
      _nin(c, self.dtype, name)(h).reshape(b, height * width, 1, c) for name in ("q", "k", "v")
    )
    scale = c**-0.5
    if self.attention == "einsum":
      logits = jnp.einsum("btnc,bsnc->bnts", q, k, preferred_element_type=jnp.float32) * scale
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # softmax in float32
      out = jnp.einsum("bnts,bsnc->btnc", weights, v)
    else:
      # implementation None is XLA's fused-softmax path in this JAX; 'cudnn' asks for the cuDNN
      # flash kernel (GPU, bf16/fp16 only, head dim <= 256 on Hopper).
      impl = "cudnn" if self.attention == "cudnn" else None
      out = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
    out = out.reshape(b, height, width, c).astype(self.dtype)
    return x + _nin(c, self.dtype, "proj_out", scale=0.0)(out)


@MODELS.register("ddpm_unet")
class DDPMUNet(nn.Module):
  """The DDPM noise-prediction U-Net; see the module docstring. Optional class conditioning.

  With `num_classes` set, a learned embedding with num_classes + 1 rows is added to the timestep
  embedding; row `num_classes` is the null label (classifier-free guidance, Ho & Salimans 2022),
  used when `label` is None.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  num_groups: int = 32
  num_classes: int | None = None
  out_channels: int | None = None  # default: the input's channels
  dtype: str = "float32"  # compute dtype; parameters stay float32
  remat: bool = False  # jax.checkpoint each residual block (recompute in the backward pass)
  attention: str = "dot_product"  # one of ATTENTION_KINDS
  # Times per example: 1 takes t [B]; K > 1 takes t [B, K] (MeanFlow's (t, h = t - r): K = 2),
  # each column through its own sinusoid + MLP embedder, the K embeddings summed (as MeanFlow's
  # DiT sums its two). Embedder k > 0 is named temb{k}_dense0/1; K = 1 is exactly the DDPM UNet.
  num_times: int = 1
  # Pixels per side of the patches the network works on (space-to-depth in, depth-to-space out):
  # 2 halves every resolution (a 28x28 image runs at 14x14 with 4x the channels in and out), a
  # quarter of the convolution FLOPs at the same widths; 1 = the DDPM UNet.
  patch_size: int = 1

  def _check_times(self, t: jax.Array, batch: int) -> list[jax.Array]:
    """The time columns, each [B]: [t] itself when num_times == 1."""
    if self.num_times == 1:
      return [t]
    if self.num_times < 1 or t.ndim != 2 or t.shape != (batch, self.num_times):
      raise UserError(
        f"model.num_times={self.num_times} needs times of shape [B, {self.num_times}], got "
        f"{tuple(t.shape)}: pass one column per time (MeanFlow: [t, t - r]) or set num_times=1"
      )
    return [t[:, k] for k in range(self.num_times)]

  def _check(self, height: int, width: int, label: jax.Array | None) -> list[int]:
    """Raises UserError for configs that cannot work; returns the per-level resolutions."""
    if not self.ch_mult:
      raise UserError("model.ch_mult is empty; give at least one channel multiplier, e.g. (1, 2)")
    if self.attention not in ATTENTION_KINDS:
      raise UserError(f"model.attention={self.attention!r}; use one of {ATTENTION_KINDS}")
    bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % self.num_groups]
    if bad:
      raise UserError(
        f"channel counts {bad} are not divisible by model.num_groups={self.num_groups}; "
        "change model.ch, model.ch_mult or model.num_groups"
      )
    f = 2 ** (len(self.ch_mult) - 1)
    if height % f or width % f:
      raise UserError(
        f"a {height}x{width} image does not halve {len(self.ch_mult) - 1} times "
        f"(model.ch_mult={tuple(self.ch_mult)}); use fewer levels or pad the image"
      )
    levels = [height // 2**i for i in range(len(self.ch_mult))]
    if self.attn_resolutions and not set(self.attn_resolutions) & set(levels):
      raise UserError(
        f"model.attn_resolutions={tuple(self.attn_resolutions)} matches no level of a "
        f"{height}x{width} input (levels {levels}); pick from these or use ()"
      )
    if label is not None and self.num_classes is None:
      raise UserError("labels were passed to an unconditional U-Net; set model.num_classes")
    return levels

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C] float
    t: jax.Array,  # [B] timestep indices (int or float); [B, num_times] when num_times > 1
    label: jax.Array | None = None,  # [B] int32 in [0, num_classes]; None = the null label
    *,
    train: bool,
  ) -> jax.Array:  # [B, H, W, out_channels] float32
    b, height, width, c_in = x.shape
    p = self.patch_size
    if p < 1 or height % p or width % p:
      raise UserError(
        f"model.patch_size={p} does not tile a {height}x{width} image; use a divisor of both"
      )
    x = _space_to_depth(x, p)  # [B, H/p, W/p, C p^2]
    self._check(height // p, width // p, label)
    dt = jnp.dtype(self.dtype)
    out_ch = self.out_channels or c_in
    block_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock

    def res(h: jax.Array, out: int, name: str) -> jax.Array:
      block = block_cls(out, self.dropout, self.num_groups, dt, name=name)
      return block(h, temb_act, not train)

    def attn(h: jax.Array, name: str) -> jax.Array:
      return AttnBlock(self.num_groups, dt, self.attention, name=name)(h)

    # Timestep embedding (float32): sinusoid(ch) -> Dense(4ch) -> swish -> Dense(4ch), per time.
    temb = None
    for k, t_k in enumerate(self._check_times(t, b)):
      prefix = "temb" if k == 0 else f"temb{k}"
      e = timestep_embedding(t_k, self.ch)  # [B, ch]
      e = _nin(4 * self.ch, jnp.float32, f"{prefix}_dense0")(e)
      e = _nin(4 * self.ch, jnp.float32, f"{prefix}_dense1")(nn.swish(e))  # [B, 4ch]
      temb = e if temb is None else temb + e
    if self.num_classes is not None:
      if label is None:
        label = jnp.full((b,), self.num_classes, jnp.int32)
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, name="label_emb")(label)
    # Every block's temb_proj reads swish(temb); the official code recomputes it per block.
    temb_act = nn.swish(temb).astype(dt)  # [B, 4ch]

    # Down path: num_res_blocks per level, a stride-2 conv between levels; keep every output.
    hs = [_conv(self.ch, dt, "conv_in")(x.astype(dt))]
    for i_level, mult in enumerate(self.ch_mult):
      for i_block in range(self.num_res_blocks):
        h = res(hs[-1], self.ch * mult, f"down_{i_level}_block_{i_block}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"down_{i_level}_attn_{i_block}")
        hs.append(h)
      if i_level != len(self.ch_mult) - 1:
        h = hs[-1]
        if self.resamp_with_conv:
          h = _conv(h.shape[-1], dt, f"down_{i_level}_downsample", stride=2)(h)
        else:
          h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        hs.append(h)

    # Middle: res, attn, res at the lowest resolution.
    h = res(hs[-1], hs[-1].shape[-1], "mid_block_1")
    h = attn(h, "mid_attn_1")
    h = res(h, h.shape[-1], "mid_block_2")

    # Up path: num_res_blocks + 1 per level, each on concat([h, skip]); nearest x2 + conv between.
    for i_level in reversed(range(len(self.ch_mult))):
      for i_block in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res(h, self.ch * self.ch_mult[i_level], f"up_{i_level}_block_{i_block}")
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f"up_{i_level}_attn_{i_block}")
      if i_level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        if self.resamp_with_conv:
          h = _conv(h.shape[-1], dt, f"up_{i_level}_upsample")(h)
    assert not hs

    # Output (float32): GN -> swish -> conv3x3 with the 1e-10 init.
    h = nn.swish(_norm(self.num_groups, jnp.float32, "norm_out")(h))
    h = _conv(out_ch * p * p, jnp.float32, "conv_out", scale=0.0)(h)
    return _depth_to_space(h, p).astype(jnp.float32)


def _space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, p * p * C]: each p x p patch's pixels as channels."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def _depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `_space_to_depth`: [B, h, w, p * p * C] -> [B, h p, w p, C]."""
  if p == 1:
    return x
  b, h, w, cp = x.shape
  c = cp // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)
