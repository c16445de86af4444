"""The diffusion transformer (Peebles & Xie 2023): the paper's sizes and FLOPs, DiT's initialisation
(adaLN-Zero), its embeddings, input checks and one-step runs under the diffusion task.

Sizes and FLOPs use `jax.eval_shape` and lowering only (nothing of the big models is allocated).
The behaviour tests run on a tiny model with randomised parameters: at DiT's init the network
outputs exactly 0 (tested below), which would hide everything else.
"""

import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import UserError
from research.models.dit import (
  CONFIGS,
  DiT,
  DiTBlock,
  dit_config,
  patchify,
  pos_embed_2d,
  timestep_embedding,
  unpatchify,
)
from research.registry import build_module
from tests.run_helpers import REPO, load_config

# 8x8x3 images, 2x2 patches (16 tokens), 3 classes.
TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=3)
B = 2
LATENT = (1, 32, 32, 4)  # the paper's 256x256 ImageNet latents


def _inputs(h: int = 8, c: int = 3, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  x = jax.random.normal(jax.random.key(seed), (B, h, h, c))  # [B, H, W, C]
  return x, jnp.array([3, 917], jnp.int32)  # t [B]


def _init(model: nn.Module, x: jax.Array, t: jax.Array, label=None) -> dict:
  return jax.jit(lambda x, t, y: model.init(jax.random.key(0), x, t, y, train=False))(x, t, label)[
    "params"
  ]


@jax.jit
def _redraw(params: dict, key: jax.Array) -> dict:
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  new = [
    jax.random.normal(k, p.shape) * (math.prod(p.shape[:-1]) ** -0.5 if p.ndim > 1 else 0.3)
    for k, p in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(tree, new)


def _randomised(params: dict, seed: int = 1) -> dict:
  """Every leaf redrawn: kernels N(0, 1/fan_in), biases and tables N(0, 0.3^2)."""
  return _redraw(params, jax.random.key(seed))


def _apply(model: nn.Module):
  """model.apply jitted: (params, x, t, label) -> output (eager applies are slow on CPU)."""
  return jax.jit(lambda p, x, t, y=None: model.apply({"params": p}, x, t, y, train=False))


def _shapes(model: nn.Module, shape=LATENT) -> dict:
  x, t, y = jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32), jnp.zeros(shape[:1], jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y, train=False))["params"]


def _paper_model(name: str) -> DiT:
  return DiT(**dit_config(name), num_classes=1000, learn_sigma=True)


# ---- sizes and FLOPs -------------------------------------------------------------------------
# Paper Table 4 (params, rounded to 1M) and Table 1 / 4 (forward GFLOPs) at 256x256 (32x32x4).
PAPER = {"S/2": (33, 6.06), "B/2": (130, 23.01), "L/2": (458, 80.71), "XL/2": (675, 118.64)}


def _analytic_params(d: int, depth: int, p: int, c: int = 4, classes: int = 1000) -> int:
  """DiT's parameters from its layer list (learn_sigma: 2c outputs; no positional table)."""
  block = (d * 6 * d + 6 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d)
  block += 4 * d * d + d
  embed = (p * p * c * d + d) + (256 * d + d) + (d * d + d) + (classes + 1) * d
  final = (d * 2 * d + 2 * d) + (d * p * p * 2 * c + p * p * 2 * c)
  return embed + depth * block + final


def _analytic_gmacs(d: int, depth: int, p: int, hw: int = 32, c: int = 4) -> float:
  """Multiply-adds of the forward pass (the paper's 'GFLOPs', fvcore's count): per block T 12 D^2
  (qkv, proj, MLP) + 2 T^2 D (q k^T, a v) + 6 D^2 (adaLN), plus the embeddings and final layer."""
  t = (hw // p) ** 2
  block = t * 12 * d * d + 2 * t * t * d + 6 * d * d
  rest = t * p * p * c * d + 256 * d + d * d + 2 * d * d + t * d * p * p * 2 * c
  return (depth * block + rest) / 1e9


@pytest.mark.parametrize("name", list(PAPER))
def test_parameter_counts_match_the_paper(name):
  params = sum(math.prod(p.shape) for p in jax.tree.leaves(_shapes(_paper_model(name))))
  cfg = dit_config(name)
  assert params == _analytic_params(cfg["hidden_size"], cfg["depth"], cfg["patch_size"])
  assert round(params / 1e6) == PAPER[name][0], params


@pytest.mark.parametrize("name", list(PAPER))
def test_forward_flops_match_the_paper(name):
  """XLA counts 2 flops per multiply-add plus the elementwise ops; the paper (fvcore) counts one
  per multiply-add and no elementwise ops, so XLA / 2 sits just above the paper's number."""
  model = _paper_model(name)
  shapes = _shapes(model)
  f = lambda params, x, t, y: model.apply({"params": params}, x, t, y, train=False)
  args = [
    jax.ShapeDtypeStruct(LATENT, jnp.float32),
    jax.ShapeDtypeStruct(LATENT[:1], jnp.int32),
    jax.ShapeDtypeStruct(LATENT[:1], jnp.int32),
  ]
  cost = jax.jit(f).lower(shapes, *args).cost_analysis()  # unoptimised HLO, no compile
  paper = PAPER[name][1]
  xla_gmacs = cost["flops"] / 2e9
  cfg = dit_config(name)
  analytic = _analytic_gmacs(cfg["hidden_size"], cfg["depth"], cfg["patch_size"])
  assert analytic == pytest.approx(paper, rel=2e-3)
  assert analytic < xla_gmacs < paper * 1.01, (xla_gmacs, analytic, paper)


def test_the_twelve_configs():
  assert len(CONFIGS) == 12
  assert dit_config("DiT-XL/2") == dict(patch_size=2, hidden_size=1152, depth=28, num_heads=16)
  assert dit_config("S/8") == dict(patch_size=8, hidden_size=384, depth=12, num_heads=6)
  model = build_module({"name": "dit", **dit_config("B/4")})
  assert isinstance(model, DiT) and model.hidden_size == 768 and model.patch_size == 4
  with pytest.raises(UserError, match="unknown DiT config 'M/2'"):
    dit_config("M/2")


# ---- initialisation: DiT's, and adaLN-Zero ------------------------------------------------------
def test_initialisation_is_dits():
  d, p, c = 128, 4, 4
  model = DiT(patch_size=p, hidden_size=d, depth=1, num_heads=4, num_classes=10)
  x, t = _inputs(16, c)
  params = _init(model, x, t)
  assert "pos_embed" not in str(jax.tree.map(jnp.shape, params))  # fixed, not learned

  def xavier(w, fan_in, fan_out):
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert float(jnp.max(jnp.abs(w))) <= limit and float(jnp.max(jnp.abs(w))) > 0.95 * limit
    assert float(jnp.std(w)) == pytest.approx(limit / math.sqrt(3), rel=0.05)

  blk = params["blocks_0"]
  xavier(blk["qkv"]["kernel"], d, 3 * d)  # one fused qkv Linear, as timm's Attention
  xavier(blk["proj"]["kernel"], d, d)
  xavier(blk["fc1"]["kernel"], d, 4 * d)
  xavier(blk["fc2"]["kernel"], 4 * d, d)
  # The patch conv initialised as a Linear of the flattened patch: fans p p C and D (not D p p).
  assert params["x_embedder"]["kernel"].shape == (p, p, c, d)
  xavier(params["x_embedder"]["kernel"], p * p * c, d)
  for name in ("t_embedder_mlp0", "t_embedder_mlp2"):
    assert float(jnp.std(params[name]["kernel"])) == pytest.approx(0.02, rel=0.05)
  assert params["y_embedder"]["embedding"].shape == (11, d)  # + the null label
  assert float(jnp.std(params["y_embedder"]["embedding"])) == pytest.approx(0.02, rel=0.1)
  zero = ["blocks_0/adaLN_modulation", "final_adaLN_modulation", "final_linear"]
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    key = "/".join(k.key for k in path)
    if key.endswith("bias") or any(key.startswith(z) for z in zero):
      assert not np.any(np.asarray(leaf)), key


def test_adaln_zero_outputs_zero_and_blocks_are_the_identity_at_init():
  model = DiT(**TINY)
  x, t = _inputs()
  params = _init(model, x, t)
  out = _apply(model)(params, x, t, jnp.array([0, 2]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert not np.any(np.asarray(out))  # exactly zero
  block = DiTBlock(32, 2, 4.0, jnp.float32)
  h = jax.random.normal(jax.random.key(3), (B, 16, 32))
  c = jax.random.normal(jax.random.key(4), (B, 32))
  block_fn = jax.jit(lambda p: block.apply({"params": p}, h, c))
  for i in range(TINY["depth"]):
    np.testing.assert_array_equal(block_fn(params[f"blocks_{i}"]), h)

  # Gradients: only the final Linear gets one at init; once it is non-zero, they reach the blocks.
  r = jax.random.normal(jax.random.key(5), x.shape)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(r * model.apply({"params": p}, x, t, train=False))))
  g = grad(params)
  assert float(jnp.abs(g["final_linear"]["kernel"]).max()) > 0
  assert float(jnp.abs(g["final_linear"]["bias"]).max()) > 0
  assert not np.any(np.asarray(g["blocks_0"]["adaLN_modulation"]["kernel"]))
  params = dict(params, final_linear=_randomised(params["final_linear"]))
  g = grad(params)
  for name in ("blocks_0", "blocks_1"):
    assert float(jnp.abs(g[name]["adaLN_modulation"]["kernel"]).max()) > 0
  assert float(jnp.abs(g["final_adaLN_modulation"]["kernel"]).max()) > 0


# ---- embeddings and patches -----------------------------------------------------------------
def _reference_pos_embed(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """DiT's get_2d_sincos_pos_embed, written out per entry in float64: token n = i grid_w + j (row
  i, column j); the first half encodes j (MAE's meshgrid puts w first), the second half i, each
  as [sin(pos w_k), cos(pos w_k)] with w_k = 1 / 10000^(k / (dim / 4))."""
  q = dim // 4
  out = np.zeros((grid_h * grid_w, dim), np.float64)
  for i in range(grid_h):
    for j in range(grid_w):
      for k in range(q):
        w = 1.0 / 10000.0 ** (k / q)
        out[i * grid_w + j, [k, q + k, 2 * q + k, 3 * q + k]] = [
          math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)
        ]  # fmt: skip
  return out


@pytest.mark.parametrize("dim,gh,gw", [(64, 4, 4), (384, 16, 16), (32, 2, 3)])
def test_sincos_position_embedding_matches_dits(dim, gh, gw):
  np.testing.assert_allclose(
    pos_embed_2d(dim, gh, gw), _reference_pos_embed(dim, gh, gw), atol=1e-12
  )


def test_timestep_embedding_is_cos_then_sin_over_half():
  t = np.array([0.0, 1.0, 17.0, 999.0])
  half = 128
  freqs = np.exp(-math.log(10000) * np.arange(half) / half)
  ref = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(timestep_embedding(jnp.asarray(t)), ref, atol=1e-4)
  assert timestep_embedding(jnp.asarray(t), 7).shape == (4, 7)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_patchify_round_trip_and_the_patch_conv_is_a_linear_map_of_patches(p):
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  tokens = patchify(x, p)  # [B, T, p p C]
  assert tokens.shape == (2, (8 // p) * (12 // p), p * p * 3)
  np.testing.assert_array_equal(unpatchify(tokens, p, 8 // p, 12 // p), x)
  i, j = 1, 2  # token i * (W / p) + j is the patch at row i, column j
  np.testing.assert_array_equal(
    tokens[:, i * (12 // p) + j], x[:, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(2, -1)
  )
  conv = nn.Conv(16, (p, p), strides=(p, p), padding="VALID")
  w = conv.init(jax.random.key(1), x)
  w = jax.tree.map(lambda a: a + 0.1, w)  # a non-zero bias
  k = w["params"]["kernel"].reshape(p * p * 3, 16)
  linear = tokens @ k + w["params"]["bias"]
  np.testing.assert_allclose(conv.apply(w, x).reshape(2, -1, 16), linear, atol=1e-5)


def test_positions_reach_the_output():
  """A constant image: only the position table tells the tokens apart."""
  model = DiT(**TINY)
  x, t = _inputs()
  params = _randomised(_init(model, x, t))
  out = _apply(model)(params, jnp.ones_like(x), t)
  tokens = patchify(out, 2)  # [B, 16, 12]
  assert float(jnp.std(tokens, axis=1).min()) > 1e-3


# ---- behaviour -----------------------------------------------------------------------------
def test_labels_change_the_output_once_the_final_layer_is_non_zero():
  model = DiT(**TINY)
  x, t = _inputs()
  params = _init(model, x, t)
  params = {
    **params,
    "final_linear": _randomised(params["final_linear"]),
    "final_adaLN_modulation": _randomised(params["final_adaLN_modulation"], seed=2),
  }
  jitted = _apply(model)
  apply = lambda y: jitted(params, x, t, y)
  null = apply(None)
  np.testing.assert_array_equal(apply(jnp.full((B,), 3, jnp.int32)), null)  # row 3 is the null
  cond = apply(jnp.array([0, 1], jnp.int32))
  assert float(jnp.abs(cond - null).mean(axis=(1, 2, 3)).min()) > 1e-3
  assert float(jnp.abs(apply(jnp.array([2, 1])) - cond)[0].mean()) > 1e-3


def test_two_times_take_two_columns_and_both_matter():
  model = DiT(**TINY, num_times=2)
  x, _ = _inputs()
  t2 = jnp.array([[500.0, 0.0], [100.0, 50.0]])
  params = _randomised(_init(model, x, t2))
  assert {"t_embedder_mlp0", "t_embedder1_mlp0", "t_embedder1_mlp2"} <= set(params)
  apply = _apply(model)
  out = apply(params, x, t2)
  assert out.shape == x.shape
  other = apply(params, x, t2.at[:, 1].add(200.0))
  assert float(jnp.abs(other - out).mean()) > 1e-3
  with pytest.raises(UserError, match=r"num_times=2 needs times of shape \[B, 2\]") as e:
    model.apply({"params": params}, x, t2[:, 0], train=False)
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match=r"num_times=1 needs times of shape \[B\]"):
    DiT(**TINY).init(jax.random.key(0), x, t2, train=False)


def test_bfloat16_compute_keeps_float32_params_and_output():
  x, t = _inputs()
  f32 = DiT(**TINY)
  params = _randomised(_init(f32, x, t))
  bf16 = DiT(**TINY, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(bf16, x, t)))
  y = jnp.array([0, 1])
  out = _apply(bf16)(params, x, t, y)
  ref = _apply(f32)(params, x, t, y)
  assert out.dtype == jnp.float32
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_remat_changes_nothing_but_memory():
  x, t = _inputs()
  params = _randomised(_init(DiT(**TINY), x, t))

  def loss(model):
    f = lambda p: jnp.sum(model.apply({"params": p}, x, t, train=True) ** 2)
    return jax.jit(jax.value_and_grad(f))

  (v0, g0), (v1, g1) = loss(DiT(**TINY))(params), loss(DiT(**TINY, remat=True))(params)
  np.testing.assert_allclose(v0, v1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


def test_learned_sigma_doubles_the_output_channels():
  x, t = _inputs()
  model = DiT(**TINY, learn_sigma=True)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, train=False))
  assert shapes["params"]["final_linear"]["kernel"].shape == (32, 2 * 2 * 6)
  out = jax.eval_shape(lambda v: model.apply(v, x, t, train=False), shapes)
  assert out.shape == (B, 8, 8, 6) and out.dtype == jnp.float32
  shapes = jax.eval_shape(
    lambda: DiT(**TINY, out_channels=2).init(jax.random.key(0), x, t, train=False)
  )
  assert shapes["params"]["final_linear"]["kernel"].shape == (32, 2 * 2 * 2)


@pytest.mark.parametrize(
  "fields,shape,label,match",
  [
    (dict(patch_size=3), (B, 8, 8, 3), None, "patch_size=3 does not tile a 8x8 image"),
    (dict(num_heads=3), (B, 8, 8, 3), None, "hidden_size=32 is not divisible by model.num_heads=3"),
    (dict(hidden_size=34, num_heads=2), (B, 8, 8, 3), None, "multiple of 4"),
    (dict(num_classes=None), (B, 8, 8, 3), [0, 1], "labels were passed to an unconditional DiT"),
    (dict(attention="flash"), (B, 8, 8, 3), None, "model.attention='flash'"),
  ],
)
def test_bad_configs_are_one_line_errors(fields, shape, label, match):
  model = DiT(**{**TINY, **fields})
  label = None if label is None else jnp.array(label)
  with pytest.raises(UserError, match=match) as e:
    model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1]), label, train=False)
  assert "\n" not in str(e.value)


# ---- under the diffusion task ----------------------------------------------------------------
DIT_TINY = os.path.join(REPO, "tests", "configs", "dit_tiny.py")


@pytest.mark.parametrize("objective", ["ddpm", "flow", "edm", "meanflow"])
def test_a_tiny_dit_trains_under_each_objective(tmp_path, data_dir, capsys, objective):
  from research.train import loop

  config = load_config(DIT_TINY, f"objective={objective},conditional")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    config.train.log_every = 1
  state = loop.train(config, str(tmp_path))  # stops with NonFiniteError on a non-finite loss
  assert int(state.step) == 2
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
  assert len(lines) == 2
  name = "mse" if objective == "ddpm" else "objective"
  losses = [float(re.search(rf"\b(?:model/)?{name}=(\S+)", line).group(1)) for line in lines]
  assert all(np.isfinite(losses)), lines
  if objective == "ddpm":  # the output is 0 at init, so the first eps-MSE is about E[eps^2] = 1
    assert losses[0] == pytest.approx(1.0, abs=0.1)


def test_a_prediction_of_another_shape_than_the_image_is_refused_at_init(tmp_path, data_dir):
  """learn_sigma doubles DiT's output; the task trains no variance, so it refuses at set-up
  (a [B, H, W, 2] prediction would otherwise broadcast silently against 1-channel digits)."""
  from research.errors import UserError
  from research.train import setup

  config = load_config(DIT_TINY, "objective=ddpm")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.model.learn_sigma = True
  with pytest.raises(UserError, match=r"predicts \(.*learn_sigma=False"):
    setup.build(config, str(tmp_path))


def test_dit_mnist_names_its_objectives_in_one_line():
  from research.errors import UserError

  with pytest.raises(
    UserError, match=r"objective='meanflow'; use one of \['ddpm', 'edm', 'flow'\]"
  ):
    load_config(os.path.join(REPO, "experiments", "dit_mnist.py"), "objective=meanflow")
