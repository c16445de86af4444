"""The DDPM U-Net (Ho et al. 2020): parameter count, shapes, timestep embedding and behaviour.

The paper's init makes every block's last conv, the attention projections and the output conv
~1e-10, so a fresh model outputs ~0 and hides most behaviour; the behaviour tests therefore run on
randomised parameters (`_randomised`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research.models.unet  # noqa: F401  (registers "ddpm_unet")
from research.errors import UserError
from research.models.unet import DDPMUNet, timestep_embedding
from research.registry import build_module

# 8x8x1, two levels (8, 4), attention at 4 and in the middle, 3 classes.
TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=8)
B = 2


def _inputs(h: int = 8, c: int = 1, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  kx, _ = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (B, h, h, c))  # [B, H, W, C]
  t = jnp.array([3, 917], jnp.int32)  # [B]
  return x, t


def _init(model: nn.Module, x: jax.Array, t: jax.Array, label=None) -> dict:
  init = jax.jit(lambda x, t, label: model.init(jax.random.key(0), x, t, label, train=False))
  return init(x, t, label)["params"]


def _randomised(params: dict, seed: int = 1) -> dict:
  """Every leaf redrawn: kernels N(0, 1/fan_in), 1-D params (biases, GN scales) N(0, 0.3^2)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [
    jax.random.normal(k, p.shape) * (math.prod(p.shape[:-1]) ** -0.5 if p.ndim > 1 else 0.3)
    for k, p in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(tree, new)


@pytest.fixture(scope="module")
def tiny():
  """(model, randomised params, x, t) for the 8x8 class-conditional tiny U-Net."""
  model = DDPMUNet(**TINY, num_classes=3)
  x, t = _inputs()
  return model, _randomised(_init(model, x, t)), x, t, _init(model, x, t)


def _param_count(model: nn.Module, shape: tuple[int, ...]) -> int:
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32), train=False
    )
  )
  return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes))


def test_cifar10_config_has_the_papers_35_7m_parameters():
  model = build_module({"name": "ddpm_unet"})  # the defaults are the CIFAR-10 model
  # diffusers UNet2DModel with the google/ddpm-cifar10-32 config counts exactly this many.
  assert _param_count(model, (1, 32, 32, 3)) == 35_746_307
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros(1), train=False)
  )["params"]
  # Attention only at 16x16 (level 1: 2 down, 3 up) plus the middle block.
  attn = sorted(k for k in shapes if "attn" in k)
  assert attn == [
    "down_1_attn_0",
    "down_1_attn_1",
    "mid_attn_1",
    "up_1_attn_0",
    "up_1_attn_1",
    "up_1_attn_2",
  ]
  assert shapes["temb_dense0"]["kernel"].shape == (128, 512)
  # Up-path blocks read concat([h, skip]): 256 from level 1 + the 128-channel skip -> 128.
  assert shapes["up_0_block_0"]["nin_shortcut"]["kernel"].shape == (384, 128)
  assert "nin_shortcut" not in shapes["mid_block_1"]  # 1x1 shortcut only when channels change
  assert shapes["up_3_block_0"]["nin_shortcut"]["kernel"].shape == (512, 256)
  assert shapes["conv_out"]["kernel"].shape == (3, 3, 128, 3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("conditional", [False, True])
def test_mnist_config_shapes_and_dtypes(dtype, conditional):
  model = DDPMUNet(
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(14,),
    num_classes=10 if conditional else None,
    dtype=dtype,
  )
  x = jnp.zeros((B, 28, 28, 1))
  t = jnp.zeros((B,), jnp.int32)
  label = jnp.array([0, 9], jnp.int32) if conditional else None
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, label, train=False))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert ("label_emb" in variables["params"]) == conditional
  if conditional:
    assert variables["params"]["label_emb"]["embedding"].shape == (11, 128)  # + the null row
  assert "down_1_attn_0" in variables["params"] and "down_0_attn_0" not in variables["params"]
  out = jax.eval_shape(
    lambda v: model.apply(v, x, t, label, train=True, rngs={"dropout": jax.random.key(1)}),
    variables,
  )
  assert out.shape == (B, 28, 28, 1) and out.dtype == jnp.float32


def test_out_channels_and_8x8_digits_config():
  model = DDPMUNet(**TINY, out_channels=2)  # e.g. iDDPM's [eps, variance] output
  x, t = _inputs()
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, t, train=False)[0])
  assert out.shape == (B, 8, 8, 2) and out.dtype == jnp.float32


def test_timestep_embedding_matches_the_papers_formula():
  t = np.array([0, 1, 17, 500, 999])
  for dim in (128, 33):
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))  # float64 reference
    args = t[:, None] * freqs[None, :]
    ref = np.concatenate([np.sin(args), np.cos(args), np.zeros((len(t), dim % 2))], axis=1)
    got = np.asarray(timestep_embedding(jnp.asarray(t, jnp.int32), dim))
    assert got.shape == (len(t), dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-4)  # float32 args up to 999 rad


def test_fresh_model_outputs_near_zero_and_uses_glorot_init(tiny):
  model, _, x, t, params = tiny
  out = jax.jit(lambda p: model.apply({"params": p}, x, t, train=False))(params)
  # conv_out's weights are ~1e-5 of Glorot's (variance scale 1e-10); the randomised model gives O(1).
  assert float(jnp.max(jnp.abs(out))) < 1e-3
  conv1 = params["down_1_block_0"]["conv1"]["kernel"]  # [3, 3, 16, 32]: fan_in 144, fan_out 288
  limit = math.sqrt(3.0 / ((144 + 288) / 2))  # variance_scaling(1, fan_avg, uniform)
  assert 0.9 * limit < float(jnp.max(jnp.abs(conv1))) <= limit
  conv2 = params["down_1_block_0"]["conv2"]["kernel"]  # [3, 3, 32, 32], variance scale 1e-10
  assert float(jnp.max(jnp.abs(conv2))) <= 1e-5 * math.sqrt(3.0 / 288)
  assert float(jnp.max(jnp.abs(params["mid_attn_1"]["proj_out"]["kernel"]))) < 1e-5


def test_dropout_only_in_training(tiny):
  model, params, x, t, _ = tiny
  apply = jax.jit(
    lambda rng, train: model.apply({"params": params}, x, t, train=train, rngs={"dropout": rng}),
    static_argnums=1,
  )
  k1, k2 = jax.random.key(1), jax.random.key(2)
  train1, train1b, train2 = apply(k1, True), apply(k1, True), apply(k2, True)
  np.testing.assert_array_equal(train1, train1b)
  assert float(jnp.max(jnp.abs(train1 - train2))) > 1e-3
  eval1, eval2 = apply(k1, False), apply(k2, False)
  np.testing.assert_array_equal(eval1, eval2)
  assert float(jnp.max(jnp.abs(train1 - eval1))) > 1e-3


def test_class_embedding_is_used_and_none_is_the_null_label(tiny):
  model, params, x, t, _ = tiny
  apply = jax.jit(lambda label: model.apply({"params": params}, x, t, label, train=False))
  null = apply(jnp.full((B,), 3, jnp.int32))
  real = apply(jnp.array([0, 2], jnp.int32))
  other = apply(jnp.array([1, 1], jnp.int32))
  assert float(jnp.max(jnp.abs(null - real))) > 1e-3
  assert float(jnp.max(jnp.abs(real - other))) > 1e-3
  none = model.apply({"params": params}, x, t, None, train=False)
  np.testing.assert_allclose(none, null, atol=1e-6)


def test_remat_gives_the_same_output_and_gradients(tiny):
  model, params, x, t, _ = tiny
  label = jnp.array([0, 2], jnp.int32)

  def loss(p, m):  # train=True: the dropout masks must also be the same under remat
    out = m.apply({"params": p}, x, t, label, train=True, rngs={"dropout": jax.random.key(5)})
    return jnp.mean(out**2), out

  remat = model.clone(remat=True)
  grad = lambda m: jax.jit(jax.value_and_grad(lambda p: loss(p, m), has_aux=True))
  forward = jax.make_jaxpr(lambda p: loss(p, remat))(params)
  assert "remat" in str(forward) and "remat" not in str(
    jax.make_jaxpr(lambda p: loss(p, model))(params)
  )
  (l0, out0), g0 = grad(model)(params)
  (l1, out1), g1 = grad(remat)(params)
  assert float(l0) > 1e-3  # a fresh (1e-10-init) model would give ~1e-10
  np.testing.assert_allclose(out1, out0, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_einsum_and_dot_product_attention_agree(tiny):
  model, params, x, t, _ = tiny
  label = jnp.array([0, 2], jnp.int32)
  ref = model.clone(attention="einsum").apply({"params": params}, x, t, label, train=False)
  out = model.clone(attention="dot_product").apply({"params": params}, x, t, label, train=False)
  assert float(jnp.std(ref)) > 0.1  # attention output reaches the result (random proj_out)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_tracks_float32(tiny):
  model, params, x, t, _ = tiny
  label = jnp.array([0, 2], jnp.int32)
  ref = model.apply({"params": params}, x, t, label, train=False)
  out = model.clone(dtype="bfloat16").apply({"params": params}, x, t, label, train=False)
  assert out.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 0 < rel < 0.05, rel  # bf16 has ~3 significant digits; float32 would give 0


@pytest.mark.parametrize(
  "fields, shape, label, match",
  [
    ({"ch_mult": (1, 2, 2, 2)}, (1, 28, 28, 1), None, "does not halve"),
    ({"attn_resolutions": (16,)}, (1, 28, 28, 1), None, "matches no level"),
    ({"num_groups": 32}, (1, 8, 8, 1), None, "not divisible by model.num_groups"),
    ({"attention": "flash"}, (1, 8, 8, 1), None, "model.attention"),
    ({}, (1, 8, 8, 1), jnp.zeros(1, jnp.int32), "set model.num_classes"),
  ],
)
def test_bad_configs_raise_user_errors(fields, shape, label, match):
  base = dict(TINY, attn_resolutions=(14,) if shape[1] == 28 else (4,))
  model = DDPMUNet(**{**base, **fields})
  with pytest.raises(UserError, match=match):
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(1), label, train=False)
    )
