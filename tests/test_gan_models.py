"""GAN networks: DCGAN shapes and init, spectral norm, projection D, TransGAN (pixel shuffle, the
recipe through the shared step)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data
from research.models import gan, transgan
from research.tasks import gan as gan_task
from tests.run_helpers import REPO, load_config


def _init(module, *args):
  return jax.jit(functools.partial(module.init, train=False))(jax.random.key(1), *args)


def _apply(module, variables, *args, train=True):
  """Jitted apply (op-by-op dispatch of a transformer is slow on CPU); training mode."""
  if not train:
    return jax.jit(functools.partial(module.apply, train=False))(variables, *args)
  fn = functools.partial(module.apply, train=True, mutable=["batch_stats"])
  return jax.jit(fn)(variables, *args)[0]


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_dcgan_64_is_the_paper_generator():
  """Radford et al. fig. 1: z -> 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64x3."""
  g = gan.DCGANGenerator(image_shape=(64, 64, 3), features=128)
  shapes = _shapes(
    jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros((2, 100)), train=False))["params"]
  )
  assert shapes["Dense_0"]["kernel"] == (100, 4 * 4 * 1024)
  outs = [shapes[f"ConvTranspose_{i}"]["kernel"][-1] for i in range(4)]
  assert outs == [512, 256, 128, 3]
  # BatchNorm after the projection and every up-convolution but the output layer.
  assert sorted(k for k in shapes if k.startswith("BatchNorm")) == [
    f"BatchNorm_{i}" for i in range(4)
  ]


@pytest.mark.parametrize("shape,stages", [((28, 28, 1), 2), ((32, 32, 3), 3)])
def test_dcgan_pair_shapes_range_and_init(shape, stages):
  g = gan.DCGANGenerator(image_shape=shape, features=16)
  d = gan.DCGANDiscriminator(features=16)
  z = jax.random.uniform(jax.random.key(0), (8, 100), minval=-1, maxval=1)
  gv = _init(g, z)
  x = _apply(g, gv, z)
  assert x.shape == (8, *shape) and x.dtype == jnp.float32
  assert float(jnp.abs(x).max()) <= 1.0
  dv = _init(d, x)
  logits = _apply(d, dv, x)
  assert logits.shape == (8,)
  assert gan.num_stages(*shape[:2]) == stages
  # No normalisation on D's input layer, BatchNorm on the others (Radford et al. sec. 3).
  assert len(dv.get("batch_stats", {})) == stages - 1
  kernel = np.asarray(gv["params"]["Dense_0"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002  # N(0, 0.02)


def test_resize_upsampling_and_bfloat16_give_the_same_interface():
  g = gan.DCGANGenerator(image_shape=(28, 28, 1), features=8, upsample="resize", dtype="bfloat16")
  z = jnp.ones((4, 10))
  v = _init(g, z)
  x = _apply(g, v, z, train=False)
  assert x.shape == (4, 28, 28, 1) and x.dtype == jnp.float32
  assert jax.tree.leaves(v["params"])[0].dtype == jnp.float32  # parameters stay float32


def test_spectral_norm_estimate_converges_to_the_top_singular_value():
  """Power iteration with the persistent u (Miyato et al. 2018, Algorithm 1): after enough training
  calls, the stored sigma of every layer equals the largest singular value of its weight reshaped
  to a matrix, and the normalised weight has spectral norm 1."""
  d = gan.DCGANDiscriminator(features=8, norm="none", spectral_norm=True, num_classes=3)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  y = jnp.array([0, 1, 2, 0])
  v = d.init(jax.random.key(1), x, y, train=False)

  @jax.jit
  def power_steps(v):
    def body(_, v):
      _, updated = d.apply(v, x, y, train=True, mutable=["batch_stats"])
      return {**v, **updated}

    return jax.lax.fori_loop(0, 100, body, v)

  def check(v, tol):
    errors = {}
    for stats in v["batch_stats"].values():
      for name, value in stats.items():
        if name.endswith("/sigma"):
          layer, kind = name.split("/")[:2]
          w = np.asarray(v["params"][layer][kind], np.float64)
          top = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]
          errors[layer] = abs(float(value) - top) / top
    assert len(errors) == 4  # 3 convolutions + the projection embedding (1 x 1 Dense is trivial)
    return max(errors.values()) < tol, errors

  before_ok, before = check(v, 1e-3)
  assert not before_ok, before  # initial sigma = 1 is far off
  v = power_steps(power_steps(v))
  ok, errors = check(v, 1e-3)
  assert ok, errors
  # With update_stats off (eval, and the other player's step) nothing is stored.
  _, frozen = d.apply(v, x, y, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, frozen["batch_stats"], v["batch_stats"])


def test_projection_discriminator_adds_an_inner_product_with_the_class_embedding():
  """Miyato & Koyama eq. 3: d(x, y) = psi(phi(x)) + <E[y], phi(x)> is affine in E."""
  d = gan.MlpDiscriminator(hidden=(16,), num_classes=4)
  x = jax.random.normal(jax.random.key(0), (6, 5))
  y = jnp.array([0, 1, 2, 3, 1, 2])
  v = d.init(jax.random.key(1), x, y, train=False)
  emb = v["params"]["projection"]["embedding"]
  with_e = lambda e: d.apply(
    {"params": {**v["params"], "projection": {"embedding": e}}}, x, y, train=False
  )
  d0, d1, d2 = with_e(0 * emb), with_e(emb), with_e(2 * emb)
  np.testing.assert_allclose(d2 - d1, d1 - d0, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(d1 - d0)).min() > 1e-4  # the class term is really there
  # With a zero embedding the label does not matter.
  other = {"params": {**v["params"], "projection": {"embedding": 0 * emb}}}
  np.testing.assert_allclose(d.apply(other, x, (y + 1) % 4, train=False), np.asarray(d0), rtol=1e-6)


def test_conditional_generator_uses_the_label():
  g = gan.DCGANGenerator(image_shape=(8, 8, 1), features=8, num_classes=10)
  z = jnp.tile(jax.random.normal(jax.random.key(0), (1, 16)), (10, 1))
  v = _init(g, z, jnp.arange(10))
  x = np.asarray(_apply(g, v, z, jnp.arange(10), train=False))
  assert np.abs(x[0] - x[1]).max() > 1e-3
  with pytest.raises(ValueError, match="needs labels"):
    g.apply(v, z, train=False)


def test_pixel_shuffle_is_depth_to_space():
  side, c = 3, 8
  tokens = jnp.arange(2 * side * side * c, dtype=jnp.float32).reshape(2, side * side, c)
  out = np.asarray(transgan.pixel_shuffle(tokens, side)).reshape(2, 2 * side, 2 * side, c // 4)
  grid = np.asarray(tokens).reshape(2, side, side, c)
  for i in range(side):
    for j in range(side):
      block = out[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :]  # [2, 2, 2, c/4]
      np.testing.assert_array_equal(block.reshape(2, c), grid[:, i, j, :])


def test_transgan_cifar_shapes_follow_the_paper():
  """bottom 8x8 at width 1024 -> 16x16 at 256 -> 32x32 at 64 (g_depth 5,4,2); ViT D on 4x4
  patches of a 32x32 image: 64 tokens plus the class token."""
  g = transgan.TransGANGenerator(image_shape=(32, 32, 3))
  shapes = _shapes(
    jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros((1, 1024)), train=False))["params"]
  )
  assert [shapes[f"pos_embed_{i}"] for i in range(3)] == [
    (1, 64, 1024),
    (1, 256, 256),
    (1, 1024, 64),
  ]
  assert sum(k.startswith("Block_") for k in shapes) == 5 + 4 + 2
  d = transgan.ViTDiscriminator()
  dshapes = _shapes(
    jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))[
      "params"
    ]
  )
  assert dshapes["pos_embed"] == (1, 65, 384)
  assert sum(k.startswith("Block_") for k in dshapes) == 7


def test_small_transgan_pair_runs_and_checks_its_geometry():
  g = transgan.TransGANGenerator(
    image_shape=(8, 8, 1), bottom_width=4, dim=32, depths=(1, 1), heads=2, num_classes=10
  )
  z, y = jax.random.normal(jax.random.key(0), (3, 16)), jnp.array([1, 2, 3])
  v = _init(g, z, y)
  x = _apply(g, v, z, y)
  assert x.shape == (3, 8, 8, 1) and float(jnp.abs(x).max()) <= 1.0
  d = transgan.ViTDiscriminator(patch_size=2, dim=16, depth=1, heads=2, num_classes=10)
  dv = _init(d, x, y)
  assert _apply(d, dv, x, y).shape == (3,)
  bad = transgan.TransGANGenerator(image_shape=(8, 8, 1), bottom_width=4, dim=32, depths=(1, 1, 1))
  with pytest.raises(ValueError, match="must equal the"):
    bad.init(jax.random.key(0), z, train=False)


# ---- the final TransGAN's options: grid attention, relative positions, RGB skips, multi-scale D --


def test_grid_partition_round_trips_and_groups_square_cells():
  side, cell = 8, 4
  tokens = jnp.arange(2 * side * side * 3, dtype=jnp.float32).reshape(2, side * side, 3)
  cells = transgan.grid_partition(tokens, side, cell)
  assert cells.shape == (2 * 4, cell * cell, 3)
  np.testing.assert_array_equal(transgan.grid_merge(cells, side, cell), tokens)
  grid = np.asarray(tokens).reshape(2, side, side, 3)
  # Cell 1 of image 0 is rows 0-3, columns 4-7 of the token grid, row-major.
  np.testing.assert_array_equal(cells[1], grid[0, :4, 4:].reshape(16, 3))


def test_grid_attention_mixes_tokens_only_within_a_cell():
  side, cell = 8, 4
  full = transgan.Attention(dim=8, heads=2)
  grid = transgan.Attention(dim=8, heads=2, grid=cell)
  x = jax.random.normal(jax.random.key(0), (1, side * side, 8))
  v = full.init(jax.random.key(1), x, side)  # same parameters for both
  x2 = x.at[0, 0].add(1.0)  # change token (0, 0): in the top-left cell
  changed = lambda m: np.abs(np.asarray(m.apply(v, x2, side) - m.apply(v, x, side)))[0]
  in_cell = np.zeros((side, side), bool)
  in_cell[:cell, :cell] = True
  g = changed(grid).max(-1).reshape(side, side)
  assert g[in_cell].min() > 0 and g[~in_cell].max() == 0
  assert changed(full).max(-1).reshape(side, side)[~in_cell].min() > 0


def test_relative_position_bias_depends_only_on_the_offset():
  w = 4
  idx = transgan.relative_position_index(w)
  assert idx.shape == (w * w, w * w) and idx.max() == (2 * w - 1) ** 2 - 1
  pos = [(i, j) for i in range(w) for j in range(w)]
  for a, (ai, aj) in enumerate(pos):
    for b, (bi, bj) in enumerate(pos):
      # Same offset, same table row: shift both tokens by (1, 1) where they stay in the window.
      if max(ai, aj, bi, bj) < w - 1:
        assert idx[a, b] == idx[a + w + 1, b + w + 1]
  assert len(np.unique(idx)) == (2 * w - 1) ** 2  # every offset has its own row
  # The bias changes the attention output.
  m = transgan.Attention(dim=8, heads=2, relative_position=True)
  x = jax.random.normal(jax.random.key(0), (1, 16, 8))
  v = m.init(jax.random.key(1), x, w)
  assert v["params"]["relative_position_bias"].shape == ((2 * w - 1) ** 2, 2)
  zero = jax.tree.map(jnp.zeros_like, v["params"]["relative_position_bias"])
  v0 = {"params": {**v["params"], "relative_position_bias": zero}}
  assert not np.allclose(m.apply(v, x, w), m.apply(v0, x, w))


def test_final_transgan_layout_has_per_stage_rgb_and_a_multi_scale_discriminator():
  config = load_config(f"{REPO}/experiments/transgan_cifar10.py")
  task = gan_task.make_gan_task(config, data.DatasetInfo((32, 32, 3), 10, 100, 10))
  g = jax.eval_shape(task.generator.init, jax.random.key(0), jnp.zeros((1, 256)), train=False)
  gp = _shapes(g["params"])
  assert [gp[f"Conv_{i}"]["kernel"] for i in range(3)] == [
    (1, 1, 1024, 3),
    (1, 1, 256, 3),
    (1, 1, 64, 3),
  ]
  tables = [gp[f"Block_{i}"]["Attention_0"]["relative_position_bias"] for i in (0, 5, 9)]
  assert tables == [(15 * 15, 4), (31 * 31, 4), (63 * 63, 4)]  # windows 8, 16, 32: full grids
  d = jax.eval_shape(
    task.discriminator.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  dp = _shapes(d["params"])
  assert dp["pos_embed_1"] == (1, 256, 288) and dp["pos_embed_2"] == (1, 64, 384)
  assert dp["Conv_0"]["kernel"] == (2, 2, 3, 288) and dp["Conv_1"]["kernel"] == (4, 4, 3, 96)
  assert sum(k.startswith("Block_") for k in dp) == 3 + 3 + 1
  # A small multi-scale D with grid attention in G runs end to end.
  small_g = transgan.TransGANGenerator(
    image_shape=(16, 16, 1), bottom_width=4, dim=32, depths=(1, 1, 1), heads=2, rgb_skips=True,
    relative_position=True, grid=4,
  )  # fmt: skip
  z = jax.random.normal(jax.random.key(0), (2, 8))
  x = _apply(small_g, _init(small_g, z), z)
  assert x.shape == (2, 16, 16, 1) and float(jnp.abs(x).max()) <= 1.0
  small_d = transgan.ViTDiscriminator(
    patch_size=2, dim=16, depth=1, heads=2, multi_scale=True, relative_position=True
  )
  assert _apply(small_d, _init(small_d, x), x).shape == (2,)
