"""pix2pix / CycleGAN networks: U-Net, PatchGAN and ResNet generator shapes, layer rules, the
PatchGAN receptive field (arithmetic and gradients), conditioning, test-time dropout, and the
transposed convolutions and norms against torch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import image_translation as it
from research.registry import build_module

B = 2


def _x(h: int = 32, c: int = 3, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (B, h, h, c), minval=-1, maxval=1)


def _init(module, *args, **kw):
  rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2)}
  return jax.jit(functools.partial(module.init, train=False, **kw))(rngs, *args)


def _kernels(variables) -> dict:
  return {k: v["kernel"].shape for k, v in variables["params"].items() if "kernel" in v}


@pytest.mark.parametrize(
  "fields,downs",
  [({}, 5), ({"num_downs": 3}, 3), ({"skips": False}, 5), ({"norm": "instance"}, 5)],
)
def test_unet_shapes_and_layers(fields, downs):
  g = it.UNetGenerator(out_channels=2, features=8, **fields)
  x = _x()
  rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2)}
  train = functools.partial(g.apply, train=True, mutable=["batch_stats"])
  if fields:  # shapes only: tracing, no compilation
    v = jax.eval_shape(functools.partial(g.init, train=False), rngs, x)
    y, _ = jax.eval_shape(lambda v, x: train(v, x, rngs={"dropout": jax.random.key(3)}), v, x)
  else:
    v = _init(g, x)
    y, _ = jax.jit(train)(v, x, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.abs(y).max()) <= 1.0
  assert y.shape == (B, 32, 32, 2) and y.dtype == jnp.float32
  ks, p = _kernels(v), v["params"]
  chans = [8 * 2**i for i in range(downs)]  # 8, 16, 32, ...: below max_features=512
  assert [ks[f"down_{i}"][-1] for i in range(downs)] == chans
  assert sorted(k for k in ks if k.startswith("down")) == [f"down_{i}" for i in range(downs)]
  # Decoder in-channels: the innermost sees the bottleneck, the others [skip, up] when skipping.
  mult = 1 if fields.get("skips") is False else 2
  assert ks[f"up_{downs - 1}"][2] == chans[-1]
  assert [ks[f"up_{i}"][2] for i in range(downs - 1)] == [mult * c for c in chans[:-1]]
  assert [ks[f"up_{i}"][3] for i in range(downs)] == [2, *chans[:-1]]
  # Norm on every encoder stage but the first and the innermost, every decoder stage but the last.
  if fields.get("norm") != "instance":
    norms = sorted(k for k in p if "norm" in k)
    expect = [f"down_norm_{i}" for i in range(1, downs - 1)] + [
      f"up_norm_{i}" for i in range(1, downs)
    ]
    assert norms == sorted(expect)
  # Bias only with instance norm, and always on the output transposed conv.
  assert ("bias" in p["down_1"]) == (fields.get("norm") == "instance")
  assert "bias" in p["up_0"]


def test_unet_rejects_sides_that_do_not_halve():
  g = it.UNetGenerator(out_channels=3, features=8, num_downs=3)
  with pytest.raises(ValueError, match="divisible by"):
    jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), _x(36))
  assert it.auto_downs(256, 256) == 8 and it.auto_downs(32, 32) == 5 and it.auto_downs(48, 48) == 4


def test_unet_dropout_is_on_at_test_time():
  """The paper keeps dropout at test as the noise source; dropout_at_test=False turns it off."""
  x = _x()
  for at_test in (True, False):
    g = it.UNetGenerator(out_channels=3, features=8, num_downs=3, dropout_at_test=at_test)
    v = _init(g, x)
    apply = jax.jit(lambda v, x, key, g=g: g.apply(v, x, train=False, rngs={"dropout": key}))
    a, b = apply(v, x, jax.random.key(10)), apply(v, x, jax.random.key(11))
    assert bool(jnp.any(a != b)) == at_test
  # No dropout at all: no rng needed.
  g = it.UNetGenerator(out_channels=3, features=8, dropout=0.0)
  v = jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), x)
  assert jax.eval_shape(functools.partial(g.apply, train=False), v, x).shape == (B, 32, 32, 3)


def test_resnet_generator_shapes_and_layers():
  g = it.ResnetGenerator(out_channels=3, features=8, n_blocks=2)
  x = _x()
  v = _init(g, x)
  assert "batch_stats" not in v  # non-affine instance norm: no parameters, no running stats
  y = jax.jit(functools.partial(g.apply, train=True))(v, x)
  assert y.shape == (B, 32, 32, 3) and y.dtype == jnp.float32
  assert float(jnp.abs(y).max()) <= 1.0
  ks = _kernels(v)
  assert ks["conv_in"] == (7, 7, 3, 8) and ks["conv_out"] == (7, 7, 8, 3)
  assert ks["down_0"] == (3, 3, 8, 16) and ks["down_1"] == (3, 3, 16, 32)
  assert ks["up_1"] == (3, 3, 32, 16) and ks["up_0"] == (3, 3, 16, 8)
  assert v["params"]["block_1"]["conv_1"]["kernel"].shape == (3, 3, 32, 32)
  assert sorted(k for k in v["params"] if k.startswith("block")) == ["block_0", "block_1"]
  gb = it.ResnetGenerator(out_channels=3, features=8, n_blocks=1, norm="batch")
  vb = jax.eval_shape(functools.partial(gb.init, train=False), jax.random.key(0), x)
  assert "bias" not in vb["params"]["down_0"] and "bias" in vb["params"]["conv_out"]
  with pytest.raises(ValueError, match="divisible by"):
    jax.eval_shape(functools.partial(g.init, train=False), jax.random.key(0), _x(30))


@pytest.mark.parametrize(
  "fields,side,out",
  [({}, 32, 2), ({}, 256, 30), ({"n_layers": 1}, 32, 14), ({"kind": "pixel"}, 32, 32)],
)
def test_patch_discriminator_map_shape(fields, side, out):
  d = it.PatchDiscriminator(features=8, **fields)
  x = jnp.zeros((B, side, side, 3))
  logits = jax.eval_shape(lambda: d.init_with_output(jax.random.key(0), x, train=False)[0])
  assert logits.shape == (B, out, out) and logits.dtype == jnp.float32


def test_receptive_field_arithmetic():
  assert it.receptive_field(it.patch_layers(3)) == 70
  assert it.receptive_field(it.patch_layers(1)) == 16
  assert it.receptive_field(it.patch_layers(5)) == 286
  assert it.receptive_field(it.PIXEL_LAYERS) == 1
  assert it.PatchDiscriminator(n_layers=5).layers() == it.patch_layers(5)


def _window(layers, j: int, side: int) -> tuple[int, int]:
  """The input rows [lo, hi] that output row j reads through `layers` (padding (k-1)//2)."""
  lo, hi = j, j
  for k, s in reversed(layers):
    p = (k - 1) // 2
    lo, hi = lo * s - p, hi * s - p + k - 1
  return max(lo, 0), min(hi, side - 1)


@pytest.mark.parametrize("n_layers,side", [(1, 40), (3, 80)])
def test_receptive_field_from_gradients(n_layers, side):
  """d logit[i, j] / d x is nonzero exactly on the window of side receptive_field (clipped at the
  border). BatchNorm with running averages keeps the network local."""
  d = it.PatchDiscriminator(features=4, n_layers=n_layers)
  x = _x(side, seed=1)[:1]
  v = _init(d, x)
  rf = it.receptive_field(d.layers())
  out = d.apply(v, x, train=False).shape[1]

  @jax.jit
  def grad(x, i, j):
    return jax.grad(lambda x: d.apply(v, x, train=False)[0, i, j])(x)

  for i, j in [(out // 2, out // 2), (0, out - 1)]:
    g = np.abs(np.asarray(grad(x, i, j)))[0].sum(-1)  # [side, side]
    rows, cols = np.nonzero(g.sum(1))[0], np.nonzero(g.sum(0))[0]
    (r0, r1), (c0, c1) = _window(d.layers(), i, side), _window(d.layers(), j, side)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (r0, r1, c0, c1)
    assert np.all(g[r0 : r1 + 1, c0 : c1 + 1] > 0)  # dense inside the window
    if i == j:
      assert r1 - r0 + 1 == rf and c1 - c0 + 1 == rf


def test_conditional_discriminator_uses_cond():
  d = it.PatchDiscriminator(features=8, n_layers=1, norm="instance")
  x, a = _x(seed=1), _x(seed=2)
  v = _init(d, x, a)
  assert v["params"]["conv_0"]["kernel"].shape == (4, 4, 6, 8)  # concat([cond, x])
  apply = jax.jit(functools.partial(d.apply, train=False))
  assert bool(jnp.any(apply(v, x, a) != apply(v, x, _x(seed=3))))
  v3 = jax.eval_shape(functools.partial(d.init, train=False), jax.random.key(0), x)
  assert v3["params"]["conv_0"]["kernel"].shape == (4, 4, 3, 8)
  assert "bias" in v3["params"]["conv_1"]  # instance norm: biases on every conv


def test_registry_builds_every_module():
  for fields in [
    {"name": "pix2pix_unet", "out_channels": 3, "num_downs": 8, "dtype": "bfloat16"},
    {"name": "patch_discriminator", "n_layers": 3, "norm": "instance", "dtype": "float32"},
    {"name": "resnet_generator", "out_channels": 3, "n_blocks": 6},
  ]:
    m = build_module(fields)
    assert type(m).__name__ in ("UNetGenerator", "PatchDiscriminator", "ResnetGenerator")
  d = build_module({"name": "patch_discriminator", "features": 8, "dtype": "bfloat16"})
  y = jax.jit(lambda x: d.init_with_output(jax.random.key(0), x, train=False)[0])(_x())
  assert y.dtype == jnp.float32 and y.shape == (B, 2, 2)


def _torch_nchw(x: np.ndarray):
  torch = pytest.importorskip("torch")
  return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("kernel,pad,output_padding", [(4, 1, 0), (3, 1, 1)])
def test_conv_transpose_matches_torch(kernel, pad, output_padding):
  """torch ConvTranspose2d(k, stride 2, p, output_padding) with its kernel flipped and transposed
  into flax's [kh, kw, in, out] is `conv_transpose`; the output side is exactly 2x."""
  torch = pytest.importorskip("torch")
  x = np.asarray(_x(6, c=5))
  tconv = torch.nn.ConvTranspose2d(5, 7, kernel, 2, pad, output_padding=output_padding)
  with torch.no_grad():
    ref = tconv(_torch_nchw(x)).numpy().transpose(0, 2, 3, 1)
  w = tconv.weight.detach().numpy().transpose(2, 3, 0, 1)[::-1, ::-1]
  params = {"kernel": jnp.asarray(w.copy()), "bias": jnp.asarray(tconv.bias.detach().numpy())}
  layer = it.conv_transpose(7, kernel, pad, output_padding, True, jnp.float32, None)
  out = layer.apply({"params": params}, jnp.asarray(x))
  assert out.shape == ref.shape == (B, 12, 12, 7)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_instance_norm_and_reflect_pad_match_torch():
  torch = pytest.importorskip("torch")
  x = np.asarray(_x(8, c=4)) * 3 + 1
  with torch.no_grad():
    ref_norm = torch.nn.InstanceNorm2d(4)(_torch_nchw(x)).numpy().transpose(0, 2, 3, 1)
    ref_pad = torch.nn.ReflectionPad2d(3)(_torch_nchw(x)).numpy().transpose(0, 2, 3, 1)
  layer = it.norm_layer("instance", False, jnp.float32)
  np.testing.assert_allclose(np.asarray(layer.apply({}, jnp.asarray(x))), ref_norm, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(it.reflect_pad(jnp.asarray(x), 3)), ref_pad)


def _param_count(module, *args, **kw) -> int:
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  shapes = jax.eval_shape(lambda: module.init(keys, *args, **kw))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def test_paper_sizes_have_the_reference_code_parameter_counts():
  """At 256x256x3 the networks have the parameter counts the reference code prints: unet_256
  54.414M, the 70x70 D on (A, B) pairs 2.769M, resnet_9blocks 11.378M, the single-image D 2.765M
  (abstract shapes only: nothing is allocated)."""
  x = jnp.zeros((1, 256, 256, 3))
  assert _param_count(it.UNetGenerator(out_channels=3, num_downs=8), x, train=False) == 54_413_955
  assert _param_count(it.PatchDiscriminator(), x, x, train=False) == 2_768_705
  assert _param_count(it.ResnetGenerator(out_channels=3), x, train=False) == 11_378_179
  assert _param_count(it.PatchDiscriminator(norm="instance"), x, train=False) == 2_764_737
