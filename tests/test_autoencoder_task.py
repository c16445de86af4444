"""The KL autoencoder (LDM's first stage): KL closed form, the adversarial warm-up, the adaptive
weight against a direct gradient, parts, the latent scale factor, the second-stage API, config
errors, and one train step of the experiment that loads back through `load_trained`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data
from research.config import base_config
from research.errors import UserError
from research.registry import TASKS
from research.tasks import pixels
from research.tasks.autoencoder import AutoencoderTask, _conv_out

INFO = data.DatasetInfo(image_shape=(8, 8, 1), num_classes=None, num_train=16, num_eval=8)
KL_WEIGHT = 1e-3


def _config(disc_weight: float = 0.5, disc_start: int = 5, **task):
  c = base_config()
  c.task.name = "autoencoder"
  c.task.update({"kl_weight": KL_WEIGHT, "disc_weight": disc_weight, "disc_start": disc_start})
  c.task.update(task)
  c.model.update({"name": "autoencoder_kl", "block_out_channels": (8, 16), "layers_per_block": 1})
  c.model.update({"latent_channels": 2, "norm_num_groups": 4})
  c.model.discriminator = {"name": "patch_discriminator", "features": 8, "n_layers": 1}
  return c


def _task(**kw) -> AutoencoderTask:
  return TASKS.get("autoencoder")(_config(**kw), INFO)


def _images(n: int = 4, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 8, 8, 1)), jnp.uint8)


@pytest.fixture(scope="module")
def tiny():
  """(task with D, its variables, a batch)."""
  task = _task()
  batch = {"image": _images()}
  return task, jax.jit(task.init)(jax.random.key(0), batch), batch


def test_kl_is_the_closed_form_summed_over_latent_dims():
  rs = np.random.RandomState(1)
  mean, logvar = rs.randn(3, 2, 2, 4), rs.randn(3, 2, 2, 4) - 1.0
  want = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
  got = AutoencoderTask._kl(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_parts_with_and_without_a_discriminator(tiny):
  task, variables, _ = tiny
  assert task.parts == ("model", "disc") and task.ema_parts == ("model",)
  assert set(variables) == {"model", "disc"} and "batch_stats" in variables["disc"]
  plain = _task(disc_weight=0.0)
  assert plain.parts == ("model",) and plain.discriminator is None
  assert set(jax.eval_shape(plain.init, jax.random.key(0), {"image": _images()})) == {"model"}


def test_the_last_conv_re_applied_is_the_decoder_output(tiny):
  task, variables, _ = tiny
  params = variables["model"]["params"]
  z = jax.random.normal(jax.random.key(2), (2, 4, 4, 2))
  x_rec, h = jax.jit(task._decode_with_features)(params, z)
  last = params["decoder"]["conv_out"]
  np.testing.assert_allclose(_conv_out(h, last["kernel"], last["bias"]), x_rec, atol=1e-5)


def test_adversarial_terms_are_off_before_disc_start_and_on_after(tiny):
  task, variables, batch = tiny
  rng = jax.random.key(3)
  plain = AutoencoderTask(model=task.model, image_shape=(8, 8, 1), kl_weight=KL_WEIGHT)

  def model_loss(t, params, step):
    v = {**variables, "model": {**variables["model"], "params": params}}
    loss, metrics, _ = t.loss("model", v, batch, rng, train=True, step=step)
    return loss, metrics

  grad = jax.jit(jax.value_and_grad(lambda p, s: model_loss(task, p, s), has_aux=True))
  params = variables["model"]["params"]
  (before, m0), g0 = grad(params, jnp.int32(4))
  (want, _), g_want = jax.jit(jax.value_and_grad(lambda p: model_loss(plain, p, 0), has_aux=True))(
    params
  )
  assert float(m0["g_loss"]) == 0.0 and float(m0["d_weight"]) == 0.0
  assert float(m0["disc_factor"]) == 0.0
  np.testing.assert_allclose(before, want, rtol=1e-6)
  np.testing.assert_allclose(before, m0["nll"] + KL_WEIGHT * m0["kl"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g_want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  (after, m1), _ = grad(params, jnp.int32(5))
  assert float(m1["disc_factor"]) == 1.0 and float(m1["d_weight"]) > 0
  assert float(m1["g_loss"]) != 0.0
  np.testing.assert_allclose(
    after, m1["nll"] + KL_WEIGHT * m1["kl"] + m1["d_weight"] * m1["g_loss"], rtol=1e-5
  )
  assert abs(float(after - before)) > 1e-4

  # The adaptive weight against gradients through the whole decoder with the kernel swapped in
  # (LDM's autograd.grad w.r.t. decoder.conv_out.weight), same posterior sample.
  x = pixels.to_signed(batch["image"])
  z = jax.jit(lambda p: task._sample_posterior(rng, *task._encode(p, x)))(params)

  def decoded(k):
    p = jax.tree.map(lambda a: a, params)
    p["decoder"]["conv_out"]["kernel"] = k
    return task._decode(p, z)

  @jax.jit
  def reference_grads(kernel):
    g_nll = jax.grad(lambda k: jnp.sum(jnp.abs(x - decoded(k))) / x.shape[0])(kernel)
    g_adv = jax.grad(lambda k: -jnp.mean(task._judge(variables["disc"], decoded(k))[0]))(kernel)
    return g_nll, g_adv

  g_nll, g_adv = reference_grads(params["decoder"]["conv_out"]["kernel"])
  ratio = np.linalg.norm(g_nll) / (np.linalg.norm(g_adv) + 1e-4)
  np.testing.assert_allclose(m1["d_weight"], 0.5 * np.clip(ratio, 0, 1e4), rtol=1e-4)


def test_disc_loss_and_its_gradient_are_zero_before_disc_start(tiny):
  task, variables, batch = tiny

  def disc_loss(params, step):
    v = {**variables, "disc": {**variables["disc"], "params": params}}
    loss, metrics, updated = task.loss("disc", v, batch, jax.random.key(4), train=True, step=step)
    return loss, (metrics, updated)

  grad = jax.jit(jax.value_and_grad(disc_loss, has_aux=True))
  params = variables["disc"]["params"]
  (loss, (metrics, updated)), g = grad(params, jnp.int32(4))
  assert float(loss) == 0.0 and float(metrics["d_real"]) == 0.0
  assert all(not np.any(np.asarray(a)) for a in jax.tree.leaves(g))
  same = jax.tree.map(
    np.array_equal, updated["disc"], {"batch_stats": variables["disc"]["batch_stats"]}
  )
  assert all(jax.tree.leaves(same))
  (loss, (metrics, updated)), g = grad(params, jnp.int32(5))
  assert float(loss) > 0 and float(loss) == pytest.approx(float(metrics["d_loss"]))
  assert any(np.any(np.asarray(a)) for a in jax.tree.leaves(g))
  changed = jax.tree.map(
    np.array_equal, updated["disc"], {"batch_stats": variables["disc"]["batch_stats"]}
  )
  assert not all(jax.tree.leaves(changed))


def test_latent_std_and_scale_factor_are_numpys_over_the_split(tiny):
  task, variables, _ = tiny
  sums = jax.jit(task.eval_sums)
  batches = [
    {"image": _images(4, seed=5), "mask": jnp.array([1.0, 1.0, 1.0, 1.0])},
    {"image": _images(4, seed=6), "mask": jnp.array([1.0, 1.0, 0.0, 0.0])},  # 2 padding rows
  ]
  outs = [sums(variables, b, jax.random.key(0)) for b in batches]
  totals = {k: np.asarray(outs[0][k]) + np.asarray(outs[1][k]) for k in outs[0]}
  summary = task.eval_summary(totals)
  real = jnp.concatenate([batches[0]["image"], batches[1]["image"][:2]])
  z, decoded = jax.jit(lambda v, x: (task.encode(v, x), task.decode(v, task.encode(v, x))))(
    variables, real
  )
  z = np.asarray(z, np.float64)  # [6, 4, 4, 2]
  assert summary["num_examples"] == 6
  np.testing.assert_allclose(summary["latent_std"], z.std(), rtol=1e-4)
  np.testing.assert_allclose(summary["scale_factor"], 1.0 / z.std(), rtol=1e-4)
  np.testing.assert_allclose(summary["latent_mean"], z.mean(), rtol=1e-4, atol=1e-6)
  recon = np.asarray(decoded, np.float64) / 255.0
  mse = np.mean((recon - np.asarray(real, np.float64) / 255.0) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(summary["mse"], mse.mean(), rtol=1e-4)
  np.testing.assert_allclose(summary["psnr_db"], np.mean(10 * np.log10(1 / mse)), rtol=1e-4)
  assert summary["sample_latent_std"] >= summary["latent_std"] > 0


def test_encode_decode_sample_and_artifact_shapes(tiny):
  task, variables, batch = tiny
  assert task.latent_shape == (4, 4, 2) and task.downsample == 2

  @jax.jit
  def run(v, images, key):
    z = task.encode(v, images)
    pic = task.artifacts(v, {"image": images}, key)["reconstructions.png"]
    return z, task.decode(v, z), task.sample(v, key, 3)["images"], pic

  z, images, samples, pic = run(variables, batch["image"], jax.random.key(1))
  assert z.shape == (4, 4, 4, 2) and z.dtype == jnp.float32
  assert images.shape == (4, 8, 8, 1) and images.dtype == jnp.uint8
  assert samples.shape == (3, 8, 8, 1) and samples.dtype == jnp.uint8
  assert pic.dtype == jnp.uint8 and pic.shape[0] == 2 * (8 + 1)


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda c: c.task.update({"kl_wieght": 1.0}), "unknown config keys ['kl_wieght']"),
    (lambda c: c.task.update({"disc_loss": "wgan"}), "disc_loss='wgan'"),
    (lambda c: c.model.update({"block_out_channels": (8, 8, 8, 8, 8)}), "do not divide"),
    (lambda c: c.model.update({"norm_num_groups": 3}), "norm_num_groups=3"),
    (lambda c: c.model.discriminator.update({"n_layers": 4}), "leaves no patch"),
    (lambda c: c.model.update({"latent_chanels": 4}), "does not fit model AutoencoderKL"),
  ],
)
def test_a_bad_config_is_a_one_line_user_error(edit, message):
  c = _config()
  edit(c)
  with pytest.raises(UserError) as e:
    TASKS.get("autoencoder")(c, INFO)
  assert message in str(e.value) and "\n" not in str(e.value)
