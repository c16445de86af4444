"""pix2pix and CycleGAN on the shared step: what each loss sees, the history buffer, the parts.

- pix2pix: the L1 term and its lambda enter only the generator's loss; the discriminator judges
  (input, image) pairs, never an image alone (unless the unconditional ablation is asked for).
- CycleGAN: the 50-image history returns a stored image with probability 1/2 once full, and is
  kept in the train state; each generator's update leaves every other part's parameters alone.
- SSIM and PSNR match TensorFlow's `tf.image.ssim` / `tf.image.psnr`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.models.image_translation import PatchDiscriminator, ResnetGenerator, UNetGenerator
from research.tasks import translation_metrics
from research.tasks.cyclegan import CycleGANTask, empty_history, query_history
from research.tasks.pix2pix import Pix2PixTask
from research.train import state as state_lib
from research.train.step import StepConfig, make_train_step

STEP = jnp.zeros((), jnp.int32)


def _paired_batch(n=4, side=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "input": jnp.asarray(rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)),
    "image": jnp.asarray(rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8)),
    "mask": jnp.ones((n,), jnp.float32),
    "input_mask": jnp.ones((n,), jnp.float32),
  }


def _pix2pix(**kw) -> Pix2PixTask:
  return Pix2PixTask(
    generator=UNetGenerator(out_channels=1, features=4, max_features=8, num_downs=2),
    discriminator=kw.pop("discriminator", PatchDiscriminator(features=4, n_layers=1)),
    **kw,
  )


def test_l1_and_its_weight_enter_only_the_generator_loss():
  batch, key = _paired_batch(), jax.random.key(1)
  variables = _pix2pix().init(jax.random.key(0), batch)
  losses = {}
  for weight in (0.0, 100.0):
    task = _pix2pix(l1_weight=weight)
    losses[weight] = {
      part: task.loss(part, variables, batch, key, train=True, step=STEP) for part in task.parts
    }
  assert float(losses[0.0]["disc"][0]) == float(losses[100.0]["disc"][0])
  gen0, gen100 = losses[0.0]["gen"], losses[100.0]["gen"]
  l1 = float(gen100[1]["l1"])
  assert l1 > 0
  np.testing.assert_allclose(float(gen100[0]) - float(gen0[0]), 100.0 * l1, rtol=1e-5)
  assert "l1" not in losses[100.0]["disc"][1]


class _PairSpy(nn.Module):
  """A discriminator whose logits are the mean of its condition (and a parameter), so two calls
  agree exactly when both were given the same condition; an image alone is an error."""

  conditional: bool = True

  @nn.compact
  def __call__(self, x, cond=None, *, train):
    del train
    bias = self.param("bias", nn.initializers.zeros, ())
    if cond is None:
      if self.conditional:
        raise AssertionError("the discriminator was shown an image without its input")
      return jnp.zeros((x.shape[0], 2, 2)) + bias + 0 * jnp.mean(x)
    assert cond.shape[:3] == x.shape[:3]
    return jnp.broadcast_to(jnp.mean(cond, axis=(1, 2, 3))[:, None, None], (x.shape[0], 2, 2)) + (
      bias + 0 * jnp.mean(x)
    )


def test_the_discriminator_sees_input_output_pairs_never_the_output_alone():
  batch, key = _paired_batch(), jax.random.key(1)
  task = _pix2pix(discriminator=_PairSpy())
  variables = task.init(jax.random.key(0), batch)
  _, metrics, _ = task.loss("disc", variables, batch, key, train=True, step=STEP)
  expected = float(jnp.mean(batch["input"].astype(jnp.float32) / 127.5 - 1.0))
  np.testing.assert_allclose(float(metrics["d_real"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["d_fake"]), expected, rtol=1e-5)  # fakes: same input
  _, metrics, _ = task.loss("gen", variables, batch, key, train=True, step=STEP)
  np.testing.assert_allclose(float(metrics["d_fake"]), expected, rtol=1e-5)
  # The paper's unconditional ablation shows D the image alone.
  ablation = _pix2pix(discriminator=_PairSpy(conditional=False), conditional_disc=False)
  ablation.loss("disc", ablation.init(jax.random.key(0), batch), batch, key, train=True, step=STEP)


def test_history_fills_then_returns_a_stored_image_half_of_the_time():
  size, shape = 4, (2, 2, 1)
  history = empty_history(size, shape)
  first = jnp.arange(1, size + 1, dtype=jnp.float32)[:, None, None, None] * jnp.ones(shape)
  out, history = query_history(history, first, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(first))  # filling: returned as is
  assert int(history["count"]) == size
  np.testing.assert_array_equal(np.asarray(history["images"]), np.asarray(first))
  n = 2_000  # fakes -1, -2, ...: a returned value > 0 or > -i came from the buffer
  fakes = -jnp.arange(1, n + 1, dtype=jnp.float32)[:, None, None, None] * jnp.ones(shape)
  out, history = query_history(history, fakes, jax.random.key(1))
  values = np.asarray(out)[:, 0, 0, 0]
  stored = values != -np.arange(1, n + 1)
  assert abs(stored.mean() - 0.5) < 0.04, stored.mean()
  # A stored image returned was put in earlier: an initial one or an earlier fake.
  assert np.all((values[stored] > 0) | (-values[stored] < np.arange(1, n + 1)[stored]))
  assert int(history["count"]) == size


def _cyclegan(pool_size=3) -> CycleGANTask:
  gen = lambda: ResnetGenerator(out_channels=1, features=4, n_blocks=1)
  disc = lambda: PatchDiscriminator(features=4, n_layers=1, norm="instance")
  return CycleGANTask(
    gen_ab=gen(),
    gen_ba=gen(),
    disc_a=disc(),
    disc_b=disc(),
    pool_size=pool_size,
    held_out_inputs=np.zeros((2, 16, 16, 1), np.uint8),
  )


@pytest.mark.parametrize("trained", ["gen_ab", "gen_ba"])
def test_each_generator_update_leaves_the_other_parts_unchanged(trained):
  task, batch = _cyclegan(), _paired_batch(n=2)
  optimizers = {p: optax.adam(1e-2) if p == trained else optax.set_to_zero() for p in task.parts}
  state = state_lib.create_state(task, optimizers, batch, seed=0, use_ema=False)
  before = jax.device_get(state.parts)
  new_state, metrics = jax.jit(make_train_step(task, optimizers, StepConfig()))(state, batch)
  after = jax.device_get(new_state.parts)
  for part in task.parts:
    same = jax.tree.map(np.array_equal, before[part].params, after[part].params)
    assert all(jax.tree.leaves(same)) == (part != trained), part
  # Both discriminators' histories took this step's fakes (two per domain), in the train state.
  for disc in ("disc_a", "disc_b"):
    assert int(after[disc].collections["history"]["count"]) == 2
  assert np.isfinite(float(metrics[f"{trained}/cycle"]))


def test_tf_image_metrics_agree():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 20, 24, 2)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
  ours = np.asarray(translation_metrics.ssim(jnp.asarray(x), jnp.asarray(y)))
  theirs = tf.image.ssim(tf.constant(x), tf.constant(y), max_val=1.0).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
  psnr = np.asarray(translation_metrics.psnr(jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(psnr, tf.image.psnr(x, y, max_val=1.0).numpy(), rtol=1e-4)
  assert float(translation_metrics.psnr(jnp.asarray(x), jnp.asarray(x))[0]) == 100.0
