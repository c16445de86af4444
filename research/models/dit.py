"""The diffusion transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

One module, `DiT`, with the denoiser signature of the DDPM UNet: noisy images [B, H, W, C], times
[B] (or [B, num_times]) and optional class labels [B] -> [B, H, W, out_channels] float32. Layer for
layer it follows facebookresearch/DiT `models.py` (cited as [models.py:lines] below):

- patchify: a p x p conv with stride p (a linear map of each patch, [models.py:161]) plus fixed 2-D
  sin-cos position embeddings (MAE's, not learned [models.py:174,192-193,271-320]) -> T = HW / p^2
  tokens of width D;
- conditioning c = t_emb + y_emb: the time as a 256-d sinusoid [cos, sin] with frequencies
  exp(-ln(1e4) i / 128), then Linear(256, D) -> SiLU -> Linear(D, D) [models.py:27-63]; the label
  from a table with a null row `num_classes` (classifier-free guidance, Ho & Salimans 2022);
- `depth` adaLN-Zero blocks (sec. 3.2 "adaLN-Zero block"; [models.py:101-123]): from SiLU(c) ->
  Linear(D, 6D) come (shift, scale, gate) for attention and for the MLP, and with
  modulate(h) = h (1 + scale) + shift and LayerNorm without affine (eps 1e-6),
    x <- x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa)),
    x <- x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp)),
  multi-head attention with one fused qkv Linear (bias on), an MLP of ratio 4 with GELU(tanh);
- the final layer: modulate(LN(x)) with (shift, scale) from SiLU(c) -> Linear(D, 2D), then
  Linear(D, p^2 out_channels), unpatchified to the image [models.py:126-142,222-236].

Initialisation as [models.py:182-216]: every Linear xavier_uniform with zero bias; the patch conv
xavier_uniform on its kernel viewed as a (p^2 C) x D matrix; the label table and both timestep-MLP
weights N(0, 0.02); zeros for every adaLN modulation and for the final Linear. So at init every
block is the identity and the network outputs exactly 0.

Learned sigma (`learn_sigma`, sec. 3.2 / iDDPM): the output gets out_channels more channels, the
variance interpolant v after the prediction (DiT's 8 channels for a 4-channel latent). The
diffusion task (`research.tasks.diffusion`) has no learned-variance loss: its objectives regress
the whole output on a target of the image's channels, so configs for it keep learn_sigma=False.

Times: DDPM integer timesteps, flow matching's 1000 t or EDM's ln(sigma) / 4 all go into the same
sinusoid. With `num_times` = K > 1, t is [B, K] and K embedders are summed (MeanFlow's (t, t - r)).

Mixed precision: parameters are float32; the patch conv, the blocks (attention and MLP) compute in
`dtype`, with LayerNorm statistics and the attention softmax in float32; the conditioning path
(time and label embeddings) and the final layer stay float32. The output is float32.

`CONFIGS` holds the paper's 12 models (Table 1 / sec. 3.2): DiT-S/B/L/XL at patches 2, 4, 8.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.registry import MODELS

ATTENTION_KINDS = ("dot_product", "cudnn")
FREQUENCY_DIM = 256  # the timestep sinusoid's width [models.py:31]

# DiT-S/B/L/XL: (hidden_size, depth, num_heads) [models.py:328-362]; each at patch 2, 4 and 8.
_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
CONFIGS: dict[str, dict[str, int]] = {
  f"{size}/{p}": {"patch_size": p, "hidden_size": d, "depth": n, "num_heads": h}
  for size, (d, n, h) in _SIZES.items()
  for p in (2, 4, 8)
}


def dit_config(name: str) -> dict[str, int]:
  """The fields of a paper config, e.g. dit_config("B/2") or dit_config("DiT-XL/2")."""
  key = name.removeprefix("DiT-")
  if key not in CONFIGS:
    raise UserError(f"unknown DiT config {name!r}; known: {', '.join(CONFIGS)}")
  return dict(CONFIGS[key])


# ---- embeddings ----------------------------------------------------------------------------------
def timestep_embedding(
  t: jax.Array, dim: int = FREQUENCY_DIM, max_period: float = 1e4
) -> jax.Array:
  """DiT's (GLIDE's) sinusoid [B] -> [B, dim] float32: [cos, sin], freqs exp(-ln(max_period) i/half).

  [models.py:40-57]; an odd `dim` is zero-padded. (The DDPM UNet's is [sin, cos] with / (half - 1).)
  """
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
  args = t.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]  # [B, half]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [B, 2 half]
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[M] positions -> [M, dim] float64: [sin(pos w), cos(pos w)], w_i = 10000^(-2i / dim)."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # [dim / 2]
  out = pos.reshape(-1).astype(np.float64)[:, None] * omega[None, :]  # [M, dim / 2]
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """MAE's fixed 2-D sin-cos table [grid_h * grid_w, dim] float64, tokens in row-major order.

  As `get_2d_sincos_pos_embed` [models.py:271-320] (square grids there): the first dim / 2 columns
  encode the column index, the last dim / 2 the row index (MAE's meshgrid puts w first).
  """
  cols, rows = np.meshgrid(np.arange(grid_w), np.arange(grid_h))  # each [grid_h, grid_w]
  return np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p * p * C]: row-major patches, each flattened (row, col, chan)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, C]
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int) -> jax.Array:
  """The inverse of `patchify` for an h x w grid of patches -> [B, h p, w p, C] [models.py:222-236]."""
  b, _, cpp = x.shape
  c = cpp // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)  # 'nhwpqc->nhpwqc'
  return x.reshape(b, h * p, w * p, c)


# ---- layers ----------------------------------------------------------------------------------
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _dense(features: int, dtype: Any, name: str, init: Any = _xavier) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=_zeros, name=name)


def _norm(dtype: Any, name: str) -> nn.LayerNorm:
  # No affine, eps 1e-6 [models.py:105]; Flax reduces in float32 and casts the output to dtype.
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, T, D] * (1 + scale [B, D]) + shift [B, D] [models.py:19-20]."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
  """One adaLN-Zero block (see the module docstring) on tokens [B, T, D] and conditioning c [B, D]."""

  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: Any
  attention: str = "dot_product"

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    d, dt = self.hidden_size, self.dtype
    b, t, _ = x.shape
    mod = _dense(6 * d, dt, "adaLN_modulation", init=_zeros)(nn.silu(c).astype(dt))  # [B, 6D]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

    # Attention (timm's Attention: one qkv Linear, [B, T, 3, heads, D / heads]).
    h = _modulate(_norm(dt, "norm1")(x), shift_msa, scale_msa)
    qkv = _dense(3 * d, dt, "qkv")(h).reshape(b, t, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, heads, D / heads]
    impl = "cudnn" if self.attention == "cudnn" else None  # None: XLA, float32 softmax
    a = jax.nn.dot_product_attention(q, k, v, implementation=impl)  # scale (D / heads)^-1/2
    a = _dense(d, dt, "proj")(a.reshape(b, t, d).astype(dt))
    x = x + gate_msa[:, None, :] * a

    # MLP (timm's Mlp with GELU(approximate="tanh")).
    h = _modulate(_norm(dt, "norm2")(x), shift_mlp, scale_mlp)
    h = nn.gelu(_dense(int(d * self.mlp_ratio), dt, "fc1")(h), approximate=True)
    x = x + gate_mlp[:, None, :] * _dense(d, dt, "fc2")(h)
    return x  # [B, T, D]


@MODELS.register("dit")
class DiT(nn.Module):
  """The diffusion transformer; see the module docstring. Optional class conditioning.

  With `num_classes` set, labels [B] in [0, num_classes] index a table of num_classes + 1 rows; row
  `num_classes` is the null label, used when `label` is None. The task drops labels to it in
  training (DiT's `class_dropout_prob` lives in the diffusion task's `label_dropout`).
  """

  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int | None = None
  learn_sigma: bool = False  # True: out_channels more output channels (DiT's variance interpolant)
  out_channels: int | None = None  # channels of the prediction; default: the input's
  # Times per example: 1 takes t [B]; K > 1 takes t [B, K], K sinusoid + MLP embedders summed
  # (MeanFlow's (t, t - r): K = 2). Embedder k > 0 is named t_embedder{k}.
  num_times: int = 1
  dtype: str = "float32"  # compute dtype; parameters stay float32
  remat: bool = False  # jax.checkpoint each block (recompute in the backward pass)
  attention: str = "dot_product"  # one of ATTENTION_KINDS

  def _check(self, x: jax.Array, t: jax.Array, label: jax.Array | None) -> list[jax.Array]:
    """Raises UserError for configs or inputs that cannot work; returns the time columns [B]."""
    b, height, width, _ = x.shape
    p, d = self.patch_size, self.hidden_size
    if p < 1 or height % p or width % p:
      raise UserError(
        f"model.patch_size={p} does not tile a {height}x{width} image; use a divisor of both"
      )
    if self.num_heads < 1 or d % self.num_heads:
      raise UserError(f"model.hidden_size={d} is not divisible by model.num_heads={self.num_heads}")
    if d % 4:
      raise UserError(f"model.hidden_size={d} must be a multiple of 4 (2-D sin-cos positions)")
    if self.attention not in ATTENTION_KINDS:
      raise UserError(f"model.attention={self.attention!r}; use one of {ATTENTION_KINDS}")
    if label is not None and self.num_classes is None:
      raise UserError("labels were passed to an unconditional DiT; set model.num_classes")
    k = self.num_times
    want = (b,) if k == 1 else (b, k)
    if k < 1 or tuple(t.shape) != want:
      raise UserError(
        f"model.num_times={k} needs times of shape [{', '.join(['B'] + [str(k)] * (k > 1))}], "
        f"got {tuple(t.shape)} for a batch of {b}: pass one column per time or change num_times"
      )
    return [t] if k == 1 else [t[:, i] for i in range(k)]

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C] float
    t: jax.Array,  # [B] timesteps (int or float); [B, num_times] when num_times > 1
    label: jax.Array | None = None,  # [B] int32 in [0, num_classes]; None = the null label
    *,
    train: bool,  # unused: DiT has no dropout (labels are dropped by the task)
  ) -> jax.Array:  # [B, H, W, out_channels (x 2 with learn_sigma)] float32
    del train
    times = self._check(x, t, label)
    b, height, width, c_in = x.shape
    p, d, dt = self.patch_size, self.hidden_size, jnp.dtype(self.dtype)
    gh, gw = height // p, width // p
    out_ch = (self.out_channels or c_in) * (2 if self.learn_sigma else 1)

    # Patch embedding: conv p x p / p, xavier on the kernel as a (p p C) x D matrix [models.py:196-199].
    patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", (0, 1, 2), -1)
    h = nn.Conv(
      d, (p, p), strides=(p, p), padding="VALID", dtype=dt, kernel_init=patch_init,
      bias_init=_zeros, name="x_embedder",
    )(x.astype(dt))  # fmt: skip
    h = h.reshape(b, gh * gw, d)  # [B, T, D], row-major tokens
    pos = jnp.asarray(pos_embed_2d(d, gh, gw), jnp.float32)  # a constant, not a parameter
    h = (h + pos[None].astype(dt)).astype(dt)

    # Conditioning (float32): sum of the time embedders, plus the label embedding.
    c = None
    normal = nn.initializers.normal(0.02)
    for k, t_k in enumerate(times):
      name = "t_embedder" if k == 0 else f"t_embedder{k}"
      e = _dense(d, jnp.float32, f"{name}_mlp0", init=normal)(timestep_embedding(t_k))
      e = _dense(d, jnp.float32, f"{name}_mlp2", init=normal)(nn.silu(e))  # [B, D]
      c = e if c is None else c + e
    if self.num_classes is not None:
      if label is None:
        label = jnp.full((b,), self.num_classes, jnp.int32)
      table = nn.Embed(self.num_classes + 1, d, embedding_init=normal, name="y_embedder")
      c = c + table(label.astype(jnp.int32))  # [B, D]

    block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      blk = block_cls(d, self.num_heads, self.mlp_ratio, dt, self.attention, name=f"blocks_{i}")
      h = blk(h, c)  # [B, T, D]

    # Final layer (float32): adaLN (shift, scale), zero-init Linear, unpatchify.
    shift, scale = jnp.split(
      _dense(2 * d, jnp.float32, "final_adaLN_modulation", init=_zeros)(nn.silu(c)), 2, axis=-1
    )
    h = _modulate(_norm(jnp.float32, "final_norm")(h.astype(jnp.float32)), shift, scale)
    h = _dense(p * p * out_ch, jnp.float32, "final_linear", init=_zeros)(h)  # [B, T, p p out]
    return unpatchify(h, p, gh, gw).astype(jnp.float32)
