"""The FID InceptionV3 (the 2015-12-05 TensorFlow graph), as a linen module with typed fields.

Architecture: Szegedy et al. 2016 ("Rethinking the Inception Architecture"), in the variant of the
2015-12-05 TF graph that TTUR's FID (Heusel et al. 2017) and the Inception Score (Salimans et al.
2016) use, as ported by pytorch-fid (`FIDInceptionA/C/E_1/E_2`). It differs from torchvision's
ImageNet Inception-v3 in three places:
- the 3x3/1 average pools inside blocks A, C and E skip the zero padding (TF's average pool;
  `count_include_pad=False` in pytorch-fid);
- the pool branch of the last block (Mixed_7c, `FIDInceptionE_2`) is a 3x3/1 *max* pool;
- the classifier has 1008 outputs (the graph's `softmax/logits`), not 1000.

Submodule names are the PyTorch state_dict names (``Mixed_5b/branch5x5_1``), so the converter in
`research.eval.inception_weights` maps ``Mixed_5b.branch5x5_1.conv.weight`` -> ``Mixed_5b/
branch5x5_1/kernel`` without a table. BatchNorm (eps 1e-3, inference statistics) is folded into each
convolution's kernel and bias by the converter, so every `BasicConv2d` here is conv + bias + ReLU.

Input: uint8 images [B, H, W, C] (C = 1 is tiled to 3), resized to 299x299 and scaled to [-1, 1].
Output: pool_3 features [B, 2048] (the FID features) and logits [B, 1008] (for IS).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import UserError
from research.registry import MODELS

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
RESIZE_METHODS = ("bilinear", "tf1_bilinear")

Pad = tuple[tuple[int, int], tuple[int, int]]


def _pad(kernel: tuple[int, int]) -> Pad:
  """The symmetric 'same' padding PyTorch's stride-1 convs use: (k - 1) / 2 per side."""
  return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


def _he_init() -> nn.initializers.Initializer:
  # Random weights only serve shapes and benchmarks; He init keeps ReLU activations O(1) across the
  # ~50 layers (the real kernels come from the converted TF weights).
  return nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class BasicConv2d(nn.Module):
  """Conv (BatchNorm folded into kernel and bias) + ReLU; torchvision's `BasicConv2d`."""

  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str | Pad = "VALID"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = nn.Conv(
      self.features,
      self.kernel,
      strides=self.strides,
      padding=self.padding,
      use_bias=True,
      dtype=self.dtype,
      kernel_init=_he_init(),
      name="conv",
    )
    return nn.relu(conv(x))


def _conv(name: str, features: int, kernel: tuple[int, int], dtype, **kw) -> BasicConv2d:
  return BasicConv2d(features, kernel, dtype=dtype, name=name, **kw)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3/1 average pool over the valid (unpadded) pixels only, as TF's avg_pool does."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
  """3x3/1 max pool, -inf padding (PyTorch `max_pool2d(x, 3, 1, 1)`)."""
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/c/d (pytorch-fid `FIDInceptionA`): [B, H, W, Cin] -> [B, H, W, 224 + pool]."""

  pool_features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    b1 = _conv("branch1x1", 64, (1, 1), dt)(x)
    b5 = _conv("branch5x5_1", 48, (1, 1), dt)(x)
    b5 = _conv("branch5x5_2", 64, (5, 5), dt, padding=_pad((5, 5)))(b5)
    b3 = _conv("branch3x3dbl_1", 64, (1, 1), dt)(x)
    b3 = _conv("branch3x3dbl_2", 96, (3, 3), dt, padding=_pad((3, 3)))(b3)
    b3 = _conv("branch3x3dbl_3", 96, (3, 3), dt, padding=_pad((3, 3)))(b3)
    bp = _conv("branch_pool", self.pool_features, (1, 1), dt)(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): [B, 35, 35, 288] -> [B, 17, 17, 768]."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    b3 = _conv("branch3x3", 384, (3, 3), dt, strides=(2, 2))(x)
    bd = _conv("branch3x3dbl_1", 64, (1, 1), dt)(x)
    bd = _conv("branch3x3dbl_2", 96, (3, 3), dt, padding=_pad((3, 3)))(bd)
    bd = _conv("branch3x3dbl_3", 96, (3, 3), dt, strides=(2, 2))(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (pytorch-fid `FIDInceptionC`, factorised 7x7): [B, 17, 17, 768] -> same."""

  channels_7x7: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt, c7 = self.dtype, self.channels_7x7
    r, c = (1, 7), (7, 1)
    b1 = _conv("branch1x1", 192, (1, 1), dt)(x)
    b7 = _conv("branch7x7_1", c7, (1, 1), dt)(x)
    b7 = _conv("branch7x7_2", c7, r, dt, padding=_pad(r))(b7)
    b7 = _conv("branch7x7_3", 192, c, dt, padding=_pad(c))(b7)
    bd = _conv("branch7x7dbl_1", c7, (1, 1), dt)(x)
    bd = _conv("branch7x7dbl_2", c7, c, dt, padding=_pad(c))(bd)
    bd = _conv("branch7x7dbl_3", c7, r, dt, padding=_pad(r))(bd)
    bd = _conv("branch7x7dbl_4", c7, c, dt, padding=_pad(c))(bd)
    bd = _conv("branch7x7dbl_5", 192, r, dt, padding=_pad(r))(bd)
    bp = _conv("branch_pool", 192, (1, 1), dt)(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): [B, 17, 17, 768] -> [B, 8, 8, 1280]."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    b3 = _conv("branch3x3_1", 192, (1, 1), dt)(x)
    b3 = _conv("branch3x3_2", 320, (3, 3), dt, strides=(2, 2))(b3)
    b7 = _conv("branch7x7x3_1", 192, (1, 1), dt)(x)
    b7 = _conv("branch7x7x3_2", 192, (1, 7), dt, padding=_pad((1, 7)))(b7)
    b7 = _conv("branch7x7x3_3", 192, (7, 1), dt, padding=_pad((7, 1)))(b7)
    b7 = _conv("branch7x7x3_4", 192, (3, 3), dt, strides=(2, 2))(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (avg-pool branch, `FIDInceptionE_1`) and Mixed_7c (max-pool, `FIDInceptionE_2`).

  [B, 8, 8, Cin] -> [B, 8, 8, 2048].
  """

  max_pool: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    r, c = (1, 3), (3, 1)
    b1 = _conv("branch1x1", 320, (1, 1), dt)(x)
    b3 = _conv("branch3x3_1", 384, (1, 1), dt)(x)
    b3 = jnp.concatenate(
      [
        _conv("branch3x3_2a", 384, r, dt, padding=_pad(r))(b3),
        _conv("branch3x3_2b", 384, c, dt, padding=_pad(c))(b3),
      ],
      axis=-1,
    )
    bd = _conv("branch3x3dbl_1", 448, (1, 1), dt)(x)
    bd = _conv("branch3x3dbl_2", 384, (3, 3), dt, padding=_pad((3, 3)))(bd)
    bd = jnp.concatenate(
      [
        _conv("branch3x3dbl_3a", 384, r, dt, padding=_pad(r))(bd),
        _conv("branch3x3dbl_3b", 384, c, dt, padding=_pad(c))(bd),
      ],
      axis=-1,
    )
    # pytorch-fid: "The FID Inception model uses max pooling instead of average pooling" in 7c.
    pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
    bp = _conv("branch_pool", 192, (1, 1), dt)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class _Logits(nn.Module):
  """The graph's softmax/logits layer: features [B, D] -> (f @ W, f @ W + b), both [B, K]."""

  num_classes: int

  @nn.compact
  def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = features.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (d, self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    logits = jnp.dot(features, kernel, precision=jax.lax.Precision.HIGHEST)
    return logits, logits + bias


def _tf1_bilinear(x: jax.Array, size: int) -> jax.Array:
  """TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`: src = dst * in / out.

  The resize inside the 2015 TF graph (and torch-fidelity's port); [B, H, W, C] -> [B, S, S, C].
  """

  def axis_weights(n_in: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    src = jnp.arange(size, dtype=jnp.float32) * (n_in / size)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo

  y0, y1, wy = axis_weights(x.shape[1])
  x0, x1, wx = axis_weights(x.shape[2])
  rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
  return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def preprocess(images: jax.Array, resize: str = "bilinear") -> jax.Array:
  """uint8 [B, H, W, C in {1, 3}] -> float32 [B, 299, 299, 3] in [-1, 1].

  resize='bilinear' is pytorch-fid's `F.interpolate(bilinear, align_corners=False)`: half-pixel
  centres and no antialiasing (JAX's default antialias would differ when downsampling);
  'tf1_bilinear' is the TF graph's own legacy resize.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"Inception takes images [B, H, W, 1 or 3], got shape {images.shape}")
  if images.dtype != jnp.uint8:
    raise UserError(
      f"Inception takes uint8 images (the FID protocol quantises before feature extraction), got "
      f"{images.dtype}; quantise first (research.eval.images.to_uint8 for images in [0, 1])"
    )
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))  # grayscale digits: the same plane in R, G and B
  b = x.shape[0]
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    if resize == "bilinear":
      x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
    elif resize == "tf1_bilinear":
      x = _tf1_bilinear(x, INPUT_SIZE)
    else:
      raise UserError(f"unknown Inception resize {resize!r}; use one of {RESIZE_METHODS}")
  return x / 255.0 * 2.0 - 1.0  # pytorch-fid: [0, 1] -> [-1, 1] ("2 * x - 1")


@MODELS.register("inception_v3_fid")
class InceptionV3(nn.Module):
  """FID InceptionV3: uint8 images [B, H, W, C] -> {"features": [B, 2048], "logits": [B, 1008]}.

  "logits" are pool_3 @ W without the bias, as the IS code of Salimans et al. 2016 reads them
  (`softmax/logits/MatMul`'s weight input; torch-fidelity's `logits_unbiased`); "logits_biased" adds
  the graph's bias. Features and logits are returned in float32 whatever the compute dtype.
  """

  resize: str = "bilinear"
  dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators); parameters stay float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    if self.dtype not in ("float32", "bfloat16"):
      raise UserError(f"unknown Inception dtype {self.dtype!r}; use float32 or bfloat16")
    dt = jnp.dtype(self.dtype)
    x = preprocess(images, self.resize).astype(dt)  # [B, 299, 299, 3]
    x = _conv("Conv2d_1a_3x3", 32, (3, 3), dt, strides=(2, 2))(x)  # [B, 149, 149, 32]
    x = _conv("Conv2d_2a_3x3", 32, (3, 3), dt)(x)  # [B, 147, 147, 32]
    x = _conv("Conv2d_2b_3x3", 64, (3, 3), dt, padding=_pad((3, 3)))(x)  # [B, 147, 147, 64]
    x = _max_pool_3x3_s2(x)  # [B, 73, 73, 64]
    x = _conv("Conv2d_3b_1x1", 80, (1, 1), dt)(x)  # [B, 73, 73, 80]
    x = _conv("Conv2d_4a_3x3", 192, (3, 3), dt)(x)  # [B, 71, 71, 192]
    x = _max_pool_3x3_s2(x)  # [B, 35, 35, 192]
    x = InceptionA(32, dt, name="Mixed_5b")(x)  # [B, 35, 35, 256]
    x = InceptionA(64, dt, name="Mixed_5c")(x)  # [B, 35, 35, 288]
    x = InceptionA(64, dt, name="Mixed_5d")(x)  # [B, 35, 35, 288]
    x = InceptionB(dt, name="Mixed_6a")(x)  # [B, 17, 17, 768]
    x = InceptionC(128, dt, name="Mixed_6b")(x)
    x = InceptionC(160, dt, name="Mixed_6c")(x)
    x = InceptionC(160, dt, name="Mixed_6d")(x)
    x = InceptionC(192, dt, name="Mixed_6e")(x)  # [B, 17, 17, 768]
    x = InceptionD(dt, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
    x = InceptionE(False, dt, name="Mixed_7b")(x)  # [B, 8, 8, 2048]
    x = InceptionE(True, dt, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # pool_3: [B, 2048]
    logits, logits_biased = _Logits(NUM_CLASSES, name="fc")(features)  # [B, 1008] each
    return {"features": features, "logits": logits, "logits_biased": logits_biased}
