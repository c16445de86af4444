"""Image-to-image translation GANs: pix2pix (Isola et al. 2017, arXiv:1611.07004) and CycleGAN
(Zhu et al. 2017, arXiv:1703.10593); linen modules only.

Layer for layer as junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (the paper text
and that code differ in small ways; where they do the code is followed, and noted here).

- ``pix2pix_unet`` (`UNetGenerator`, ``UnetGenerator``/``UnetSkipConnectionBlock``): encoder
  C64-C128-C256-C512-C512-... of 4x4 stride-2 convolutions down to a 1x1 bottleneck (8 stages at
  256 px), channels ``min(features * 2^i, max_features)``; each stage but the first is preceded by
  LeakyReLU(0.2), and the first and the innermost have no norm. The decoder mirrors it: ReLU, 4x4
  stride-2 transposed conv, norm (none on the outermost, which ends in tanh), Dropout(0.5) in the
  three blocks just outside the innermost, then the skip concatenation ``[skip, up]``. As in the
  code (torch's in-place ``LeakyReLU(0.2, True)`` rewrites the tensor that is also concatenated,
  and the Lua original does the same), the skip carries the LeakyReLU'd encoder features.
  Dropout stays on at test time: it is the generator's only noise (paper sec. 2.2).
- ``patch_discriminator`` (`PatchDiscriminator`, ``NLayerDiscriminator``/``PixelDiscriminator``):
  a fully convolutional D scoring each patch, logits [B, h, w]. 4x4 convolutions with padding 1,
  strides 2 (n_layers times) then 1, 1: C64 (no norm) - C128 - C256 - C512 - conv to 1, i.e. the
  70x70 PatchGAN for n_layers=3 (16x16 for 1, 286x286 for 5; `receptive_field`); a 256-px input
  gives a 30x30 map. The "pixel" kind is the 1x1 PixelGAN. pix2pix's D is conditional: it sees
  ``concat([input, output])``. The paper ends in a sigmoid; the code returns logits (LSGAN / BCE
  with logits), and so does this module.
- ``resnet_generator`` (`ResnetGenerator`, CycleGAN, after Johnson et al. 2016): c7s1-64, d128,
  d256, R256 x 9 (6 at 128 px), u128, u64, c7s1-3, tanh. Reflection padding for the 7x7 convs
  and in the residual blocks (pad, conv3x3, norm, ReLU, pad, conv3x3, norm; ``x + f(x)``);
  downsampling 3x3 stride-2 zero-padded convs, upsampling 3x3 stride-2 transposed convs (torch's
  padding 1, output_padding 1); non-affine InstanceNorm by default; no dropout.

Shared details (``networks.py`` ``init_weights``, ``get_norm_layer``): weights ~ N(0, 0.02),
BatchNorm scale ~ N(1, 0.02); "instance" is non-affine InstanceNorm without running statistics;
convolutions followed by a norm have a bias only with instance norm (BatchNorm's shift makes it
redundant), convolutions that are not followed by one keep theirs. BatchNorm uses batch statistics
when `train` and its running averages (momentum 0.9 = torch's 0.1, eps 1e-5) otherwise; pix2pix's
test script keeps batch statistics at test time, which a caller gets by applying with
``train=True, mutable=['batch_stats']``.

Transposed convolutions: `conv_transpose` is torch ``ConvTranspose2d(k, stride 2, p,
output_padding)`` exactly (output ``2x`` the input), with the kernel stored unflipped as a flax
``ConvTranspose`` (``transpose_kernel=False``) kernel: ``flax[kh, kw, i, o] = torch[i, o, k-1-kh,
k-1-kw]`` (tests/test_image_translation_models.py checks it against torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.gan import DCGAN_INIT, _bn_scale_init
from research.registry import MODELS

NORMS = ("batch", "instance")


def _check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")


def norm_layer(norm: str, train: bool, dt: jnp.dtype, name: str | None = None) -> nn.Module:
  """BatchNorm (affine, gamma ~ N(1, 0.02)) or InstanceNorm (non-affine: per example and channel
  over H, W, like torch ``InstanceNorm2d(affine=False, track_running_stats=False)``)."""
  _check_norm(norm)
  if norm == "batch":
    return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init,
      dtype=dt, name=name,
    )  # fmt: skip
  return nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=dt, name=name)


def conv(
  features: int, kernel: int, stride: int, pad: int, bias: bool, dt: jnp.dtype, name: str | None
) -> nn.Conv:
  """torch ``Conv2d(kernel, stride, padding=pad)`` with zero padding, weights ~ N(0, 0.02)."""
  return nn.Conv(
    features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)), use_bias=bias,
    kernel_init=DCGAN_INIT, dtype=dt, name=name,
  )  # fmt: skip


def conv_transpose(
  features: int, kernel: int, pad: int, output_padding: int, bias: bool, dt: jnp.dtype,
  name: str | None,
) -> nn.ConvTranspose:  # fmt: skip
  """torch ``ConvTranspose2d(kernel, stride=2, padding=pad, output_padding)``: the input dilated
  by 2 and padded by ``kernel-1-pad`` (plus `output_padding` after), then a valid convolution;
  output side ``2*n - 2 - 2*pad + kernel + output_padding`` (= 2n for (4, 1, 0) and (3, 1, 1))."""
  lo = kernel - 1 - pad
  return nn.ConvTranspose(
    features, (kernel, kernel), (2, 2), ((lo, lo + output_padding),) * 2, use_bias=bias,
    kernel_init=DCGAN_INIT, dtype=dt, name=name,
  )  # fmt: skip


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """torch ``ReflectionPad2d(pad)`` on NHWC (the edge pixel is not repeated)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def auto_downs(h: int, w: int) -> int:
  """Stride-2 stages while both sides are even and above 1: log2 of the side for power-of-two
  squares (256 -> 8, a 1x1 bottleneck; 32 -> 5), fewer for other sides (48 -> 4, 3x3)."""
  n = 0
  while h % 2 == 0 and w % 2 == 0 and min(h, w) > 1:
    h, w, n = h // 2, w // 2, n + 1
  return n


@MODELS.register("pix2pix_unet")
class UNetGenerator(nn.Module):
  """pix2pix U-Net: x float [B, H, W, Cin] in [-1, 1] -> float32 [B, H, W, out_channels] (tanh).

  With ``dropout > 0`` and ``dropout_at_test`` (the paper), the apply needs a 'dropout' rng even
  when ``train=False``, and `init` does too.
  """

  out_channels: int
  features: int = 64  # ngf: channels of the first encoder stage, doubled per stage
  max_features: int = 512  # the cap on the doubling (ngf * 8 in the code)
  num_downs: int = 0  # stride-2 stages; 0 = `auto_downs` (1x1 bottleneck; 8 at 256 px)
  skips: bool = True  # False: the paper's encoder-decoder ablation (no concatenation)
  dropout: float = 0.5
  # Decoder blocks just outside the innermost that have dropout: 3 = unet_256 (num_downs 8) of the
  # code; its unet_128 (num_downs 7) has 2 (the code puts it in the num_downs - 5 ngf*8 blocks).
  dropout_blocks: int = 3
  dropout_at_test: bool = True
  norm: str = "batch"  # "batch" | "instance"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check_norm(self.norm)
    dt = jnp.dtype(self.dtype)
    _, h, w, _ = x.shape
    n = self.num_downs or auto_downs(h, w)
    if n < 1 or h % 2**n or w % 2**n:
      raise ValueError(
        f"a {h}x{w} input does not halve {n} times; UNetGenerator needs H and W divisible by "
        f"2**num_downs (num_downs={self.num_downs}, 0 = as many as the sides allow)"
      )
    bias = self.norm == "instance"
    chans = [min(self.features * 2**i, self.max_features) for i in range(n)]
    dropout_depths = range(max(1, n - 1 - self.dropout_blocks), n - 1)
    deterministic = not (train or self.dropout_at_test)

    # Encoder. taps[i - 1]: the input of block i after its LeakyReLU (see the module docstring).
    taps = []
    e = conv(chans[0], 4, 2, 1, bias, dt, "down_0")(x.astype(dt))  # [B, H/2, W/2, F]
    for i in range(1, n):
      s = nn.leaky_relu(e, 0.2)
      taps.append(s)
      e = conv(chans[i], 4, 2, 1, bias, dt, f"down_{i}")(s)  # [B, H/2^(i+1), W/2^(i+1), C_i]
      if i < n - 1:  # no norm at the innermost (1x1) stage
        e = norm_layer(self.norm, train, dt, f"down_norm_{i}")(e)

    # Decoder, from the innermost block out.
    u = e
    for i in reversed(range(n)):
      u = nn.relu(u)
      if i == 0:
        u = conv_transpose(self.out_channels, 4, 1, 0, True, dt, "up_0")(u)  # [B, H, W, out]
        break
      u = conv_transpose(chans[i - 1], 4, 1, 0, bias, dt, f"up_{i}")(u)  # [B, H/2^i, W/2^i, C]
      u = norm_layer(self.norm, train, dt, f"up_norm_{i}")(u)
      if i in dropout_depths:
        u = nn.Dropout(self.dropout, deterministic=deterministic)(u)
      if self.skips:
        u = jnp.concatenate([taps[i - 1], u], axis=-1)  # [B, H/2^i, W/2^i, 2 * C_{i-1}]
    return jnp.tanh(u.astype(jnp.float32))


def patch_layers(n_layers: int) -> list[tuple[int, int]]:
  """(kernel, stride) of each conv of the n-layer PatchGAN: 4x4 stride 2 ``n_layers`` times, then
  two 4x4 stride 1 (the second maps to the 1-channel logit)."""
  if n_layers < 1:
    raise ValueError(f"n_layers must be >= 1, not {n_layers}")
  return [(4, 2)] * n_layers + [(4, 1), (4, 1)]


PIXEL_LAYERS: list[tuple[int, int]] = [(1, 1)] * 3  # PixelGAN: 1x1 convs, receptive field 1


def receptive_field(layers: Sequence[tuple[int, int]]) -> int:
  """Side of the input window one output pixel sees: rf_in = (rf_out - 1) * s + k, walking back
  from one output pixel (phillipi/pix2pix scripts/receptive_field_sizes.m). 3 layers: 1 -> 4 ->
  7 -> 16 -> 34 -> 70."""
  rf = 1
  for k, s in reversed(layers):
    rf = (rf - 1) * s + k
  return rf


@MODELS.register("patch_discriminator")
class PatchDiscriminator(nn.Module):
  """PatchGAN / PixelGAN: x [B, H, W, C] (and cond [B, H, W, Cc]) -> float32 logits [B, h, w].

  With `cond`, D scores ``concat([cond, x])`` (pix2pix: the input image and a real or generated
  output). Channels ``features * min(2^i, 8)`` for layer i, then 1. 32x32 with n_layers=3 -> 2x2.
  """

  features: int = 64  # ndf
  n_layers: int = 3  # stride-2 convs: 3 = 70x70 patches, 1 = 16x16, 5 = 286x286
  kind: str = "patch"  # "patch" | "pixel" (1x1 convs: C64-C128 then 1)
  norm: str = "batch"  # "batch" | "instance"
  dtype: str = "float32"

  def layers(self) -> list[tuple[int, int]]:
    if self.kind == "patch":
      return patch_layers(self.n_layers)
    if self.kind == "pixel":
      return PIXEL_LAYERS
    raise ValueError(f"kind must be 'patch' or 'pixel', not {self.kind!r}")

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None = None, *, train: bool) -> jax.Array:
    _check_norm(self.norm)
    dt = jnp.dtype(self.dtype)
    h = x if cond is None else jnp.concatenate([cond, x.astype(cond.dtype)], axis=-1)
    h = h.astype(dt)
    layers = self.layers()
    for i, (k, s) in enumerate(layers):
      last = i == len(layers) - 1
      features = 1 if last else self.features * min(2**i, 8)
      # The first conv has a bias, the others one only with instance norm; the patch logit conv
      # has one too (PixelDiscriminator's last conv follows use_bias, as in the code).
      bias = i == 0 or self.norm == "instance" or (last and self.kind == "patch")
      h = conv(features, k, s, (k - 1) // 2, bias, dt, f"conv_{i}")(h)  # 4x4 pad 1, 1x1 pad 0
      if not last:
        h = h if i == 0 else norm_layer(self.norm, train, dt, f"norm_{i}")(h)
        h = nn.leaky_relu(h, 0.2)
    return h[..., 0].astype(jnp.float32)  # [B, h, w]


class ResnetBlock(nn.Module):
  """x + (reflect-pad 1, conv3x3, norm, ReLU, [dropout], reflect-pad 1, conv3x3, norm)(x)."""

  norm: str
  dropout: float
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dt = jnp.dtype(self.dtype)
    bias = self.norm == "instance"
    c = x.shape[-1]
    y = conv(c, 3, 1, 0, bias, dt, "conv_0")(reflect_pad(x, 1))
    y = nn.relu(norm_layer(self.norm, train, dt, "norm_0")(y))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = conv(c, 3, 1, 0, bias, dt, "conv_1")(reflect_pad(y, 1))
    return x + norm_layer(self.norm, train, dt, "norm_1")(y)


@MODELS.register("resnet_generator")
class ResnetGenerator(nn.Module):
  """CycleGAN generator: x [B, H, W, Cin] -> float32 [B, H, W, out_channels] in [-1, 1] (tanh).

  256x256x3, features 64, n_down 2: 256x256x64 -> 128x128x128 -> 64x64x256 (n_blocks residual
  blocks) -> 128x128x128 -> 256x256x64 -> 256x256x3. Dropout (torch ``use_dropout``, off in
  CycleGAN) sits in each residual block and is on only when `train`.
  """

  out_channels: int
  features: int = 64  # ngf
  n_blocks: int = 9  # 9 at 256 px, 6 at 128 px
  n_down: int = 2
  dropout: float = 0.0
  norm: str = "instance"  # "instance" | "batch"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check_norm(self.norm)
    dt = jnp.dtype(self.dtype)
    _, h, w, _ = x.shape
    if h % 2**self.n_down or w % 2**self.n_down:
      raise ValueError(
        f"a {h}x{w} input does not halve {self.n_down} times; ResnetGenerator needs H and W "
        f"divisible by 2**n_down"
      )
    bias = self.norm == "instance"
    f = self.features
    y = conv(f, 7, 1, 0, bias, dt, "conv_in")(reflect_pad(x.astype(dt), 3))  # c7s1-F: [B, H, W, F]
    y = nn.relu(norm_layer(self.norm, train, dt, "norm_in")(y))
    for i in range(self.n_down):  # dk: [B, H/2^(i+1), W/2^(i+1), F*2^(i+1)]
      y = conv(f * 2 ** (i + 1), 3, 2, 1, bias, dt, f"down_{i}")(y)
      y = nn.relu(norm_layer(self.norm, train, dt, f"down_norm_{i}")(y))
    for j in range(self.n_blocks):  # R(F*2^n_down)
      y = ResnetBlock(self.norm, self.dropout, self.dtype, name=f"block_{j}")(y, train=train)
    for i in reversed(range(self.n_down)):  # uk: [B, H/2^i, W/2^i, F*2^i]
      y = conv_transpose(f * 2**i, 3, 1, 1, bias, dt, f"up_{i}")(y)
      y = nn.relu(norm_layer(self.norm, train, dt, f"up_norm_{i}")(y))
    y = conv(self.out_channels, 7, 1, 0, True, dt, "conv_out")(reflect_pad(y, 3))  # c7s1-out
    return jnp.tanh(y.astype(jnp.float32))  # [B, H, W, out_channels]
