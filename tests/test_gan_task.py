"""The GAN task on the shared step: who updates what, one compilation, samples, configs, main."""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import data
from research.errors import UserError
from research.eval.heldout import HeldOut
from research.models import gan
from research.tasks import gan as gan_task
from research.train import loop
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.optim import make_optimizers
from research.train.step import StepConfig, make_train_step
from tests.run_helpers import REPO, load_config, subprocess_env

SHAPE = (16, 16, 1)


def _task(conditional=False, spectral_norm=False, **kw):
  """A 16x16 DCGAN pair with BatchNorm in both (D: on its second layer), optionally conditional
  with spectral norm in D as well."""
  classes = 10 if conditional else 0
  return gan_task.GANTask(
    generator=gan.DCGANGenerator(image_shape=SHAPE, features=4, num_classes=classes),
    discriminator=gan.DCGANDiscriminator(
      features=4, num_classes=classes, norm="batch", spectral_norm=spectral_norm
    ),
    latent_dim=8,
    num_classes=classes,
    **kw,
  )


def _batches(n, b=16, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.integers(0, 256, (b, *SHAPE), dtype=np.uint8),
      "label": rng.integers(0, 10, (b,), dtype=np.int32),
    }
    for _ in range(n)
  ]


def _setup(task, config=StepConfig(), devices=1, step_fn=make_train_step):
  mesh = shd.make_mesh(devices=jax.devices()[:devices])
  opts = {p: optax.adam(1e-3) for p in task.parts}
  make = state_lib.state_factory(task, opts, SHAPE, True, 0, config.ema_decay > 0)
  state, shardings = state_lib.init_sharded(make, mesh, fsdp_min_size=1)
  bs = shd.batch_sharding(mesh)
  step = jax.jit(
    step_fn(task, opts, config, mesh),
    donate_argnums=0,
    in_shardings=(shardings, bs),
    out_shardings=(shardings, shd.replicated(mesh)),
  )
  return state, step, bs


def _host(state):
  return jax.device_get({p: (s.params, s.collections) for p, s in state.parts.items()})


def _changed(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_each_player_changes_only_its_own_parameters_and_state():
  """D's update leaves G's parameters and BatchNorm statistics alone and vice versa; each player's
  own state (BN running averages; D's spectral-norm u) moves only in its own update."""
  task = _task(conditional=True, spectral_norm=True)
  for only, frozen in (("disc", "gen"), ("gen", "disc")):
    state, step, bs = _setup(task, StepConfig(part_steps=((frozen, 0),)))
    before = _host(state)
    assert {"BatchNorm_0", "SpectralNorm_0"} <= set(before["disc"][1]["batch_stats"])
    assert before["gen"][1]["batch_stats"]
    for b in _batches(2):
      state, _ = step(state, jax.device_put(b, bs))
    after = _host(state)
    chex.assert_trees_all_equal(before[frozen], after[frozen])
    assert _changed(before[only][0], after[only][0]) > 1e-4, only  # parameters
    stats_before, stats_after = before[only][1]["batch_stats"], after[only][1]["batch_stats"]
    for name in stats_before:  # every BN layer and every spectral-norm vector moved
      assert _changed(stats_before[name], stats_after[name]) > 1e-7, (only, name)


def test_two_player_step_compiles_once_and_never_syncs_with_the_host():
  """Critic steps, lazy R1 (a lax.cond) and EMA: one trace, one program, no host transfers
  while stepping, and no host callbacks inside the compiled step."""
  task = _task(loss_type="hinge", r1_gamma=1.0, r1_every=2, gen_batch_mult=2)
  config = StepConfig(part_steps=(("disc", 2),), ema_decay=0.9)
  traced = lambda *a: chex.assert_max_traces(make_train_step(*a), n=1)
  state, step, bs = _setup(task, config, step_fn=traced)
  batches = [jax.device_put(b, bs) for b in _batches(3)]
  metrics = []
  with jax.transfer_guard("disallow"):
    for b in batches:
      state, m = step(state, b)
      metrics.append(m)
  metrics = jax.device_get(metrics)
  assert int(jax.device_get(state.step)) == 3
  counts = jax.device_get({p: s.opt_state[0].count for p, s in state.parts.items()})
  assert counts == {"disc": 6, "gen": 3}
  # Lazy R1: on at steps 0 and 2 (scaled by 2), off at step 1.
  r1 = [float(m["disc/r1"]) for m in metrics]
  assert r1[0] > 0 and r1[1] == 0 and r1[2] > 0
  hlo = step.lower(state, batches[0]).as_text()
  assert "callback" not in hlo.lower()


def test_disc_normalises_reals_and_fakes_as_separate_batches():
  """The documented BatchNorm convention for D's update: its logits on the reals are those of D
  on the real batch alone (batch statistics of the reals), not of a real + fake concatenation."""
  task = _task()
  batch = _batches(1, b=8)[0]
  variables = task.init(jax.random.key(0), batch)
  rng = jax.random.key(3)
  _, metrics, updated = jax.jit(
    lambda v, b, r: task.loss("disc", v, b, r, train=True, step=jnp.int32(0))
  )(variables, batch, rng)
  real = task.real(batch)
  z_key, real_key, fake_key, _ = jax.random.split(rng, 4)
  disc = jax.jit(lambda x: task.disc(variables["disc"], x, None, real_key)[0])
  alone = disc(real)
  np.testing.assert_allclose(float(metrics["d_real"]), float(jnp.mean(alone)), rtol=1e-5)
  fake = jax.jit(lambda z: task.generate(variables["gen"], z, None)[0])(task.latents(z_key, 8))
  both = disc(jnp.concatenate([real, fake]))
  assert abs(float(jnp.mean(both[:8])) - float(metrics["d_real"])) > 1e-4
  # D's running statistics moved (reals, then fakes); G's are not returned by D's update.
  assert set(updated) == {"disc"}
  before = variables["disc"]["batch_stats"]["BatchNorm_0"]["mean"]
  assert _changed(before, updated["disc"]["batch_stats"]["BatchNorm_0"]["mean"]) > 0


def test_generator_batch_is_gen_bs_whatever_the_critic_split():
  """TransGAN's gen_bs = 2 x dis_bs with 4 critic chunks: G's update sees the whole 16-row batch
  (4 x dis_bs 4) and draws 16 * 2 / 4 = 8 latents, with as many labels; D's update draws one
  fake per real row it sees."""
  seen = []

  @dataclasses.dataclass(frozen=True)
  class Spy(gan_task.GANTask):
    def generate(self, gen, z, y, batch_stats=True):
      seen.append((z.shape[0], None if y is None else y.shape[0]))
      return super().generate(gen, z, y, batch_stats)

  base = _task(conditional=True)
  task = Spy(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
  task = dataclasses.replace(task, gen_batch_mult=2, gen_batch_div=4)
  batch = _batches(1, b=16)[0]
  variables = task.init(jax.random.key(0), batch)
  task.loss("gen", variables, batch, jax.random.key(1), train=True, step=0)
  task.loss(
    "disc", variables, jax.tree.map(lambda x: x[:4], batch), jax.random.key(2), train=True, step=0
  )
  assert seen == [(8, 8), (4, 4)]
  with pytest.raises(ValueError, match="do not divide"):
    dataclasses.replace(task, gen_batch_div=3).loss(
      "gen", variables, batch, jax.random.key(1), train=True, step=0
    )


def test_sampling_uses_batch_statistics_not_running_averages():
  """The documented convention: ``sample_bn="batch"`` ignores G's running averages entirely;
  ``"running"`` depends on them."""
  task = _task(conditional=True)
  variables = task.init(jax.random.key(0), _batches(1, b=4)[0])
  garbage = jax.tree.map(lambda x: x + 3.0, variables["gen"]["batch_stats"])
  spoiled = {**variables, "gen": {**variables["gen"], "batch_stats": garbage}}
  rng = jax.random.key(1)
  sample = jax.jit(task.sample, static_argnums=2)
  out = sample(variables, rng, 20)
  assert out["images"].dtype == jnp.uint8 and out["images"].shape == (20, *SHAPE)
  np.testing.assert_array_equal(out["labels"], np.arange(20) % 10)
  np.testing.assert_array_equal(out["images"], sample(spoiled, rng, 20)["images"])
  running = jax.jit(dataclasses.replace(task, sample_bn="running").sample, static_argnums=2)
  assert not np.array_equal(
    running(variables, rng, 20)["images"], running(spoiled, rng, 20)["images"]
  )
  grid = jax.jit(task.artifacts)(variables, _batches(1)[0], rng)["class_grid.png"]
  assert grid.shape == (10 * 17, 10 * 17, 1) and grid.dtype == jnp.uint8


def test_evaluate_counts_only_unmasked_rows():
  task = _task()
  variables = task.init(jax.random.key(0), _batches(1, b=4)[0])
  batches = _batches(2, b=8)
  for b, m in zip(batches, ([1.0] * 8, [1.0] * 3 + [0.0] * 5), strict=True):
    b["mask"] = np.asarray(m, np.float32)
  results = HeldOut(task)(variables, batches, jax.random.key(1))
  assert results["num_examples"] == 11
  assert 0.0 <= results["d_auc"] <= 1.0 and 0.0 <= results["d_accuracy"] <= 1.0
  assert np.isfinite(results["d_real_mean"]) and np.isfinite(results["d_fake_mean"])


def _load(name, arg=""):
  return load_config(os.path.join(REPO, "experiments", f"{name}.py"), arg)


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"task.loss": "wasserstein"}, "unknown GAN loss"),
    ({"task.diffaug": "translation,rotate"}, "unknown DiffAugment policy"),
    ({"task.latent_dist": "cauchy"}, "latent_dist"),
    ({"task.r1_every": 0}, "r1_every"),
  ],
)
def test_config_mistakes_are_one_line_user_errors(overrides, message):
  config = _load("dcgan_mnist", "runlocal")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  info = data.DatasetInfo((28, 28, 1), 10, 4000, 1000)
  with pytest.raises(UserError, match=message):
    gan_task.make_gan_task(config, info)


def test_each_dcgan_variant_defaults_to_its_papers_loss():
  assert _load("dcgan_mnist", "").task.loss == "non_saturating"  # Radford et al.
  assert _load("dcgan_mnist", "conditional").task.loss == "hinge"  # Miyato & Koyama
  assert _load("dcgan_mnist", "conditional,loss=minimax").task.loss == "minimax"


def test_conditional_needs_labels():
  config = _load("dcgan_mnist", "conditional")
  with pytest.raises(UserError, match="has no labels"):
    gan_task.make_gan_task(config, data.DatasetInfo((28, 28, 1), None, 10, 10))


CONFIGS = [
  ("dcgan_mnist", "", (28, 28, 1)),
  ("dcgan_mnist", "runlocal", (28, 28, 1)),
  ("dcgan_mnist", "runlocal,conditional", (28, 28, 1)),
  ("dcgan_mnist", "runlocal,loss=hinge", (28, 28, 1)),
  ("dcgan_cifar10", "", (32, 32, 3)),
  ("dcgan_cifar10", "runlocal,conditional", (32, 32, 3)),
  ("transgan_cifar10", "runlocal", (32, 32, 3)),
  ("transgan_digits", "runlocal", (8, 8, 1)),
  ("dcgan_mnist", "runlocal,loss=wgan", (28, 28, 1)),
  ("dcgan_cifar10", "loss=wgan", (32, 32, 3)),
]


@pytest.mark.parametrize("name,arg,shape", CONFIGS)
def test_every_config_traces_its_train_step(name, arg, shape):
  """Each config's task, optimizers and two-player step fit together (abstract evaluation, no
  compilation; the full TransGAN is checked by the next test)."""
  config = _load(name, arg)
  info = data.DatasetInfo(shape, 10, 1000, 100)
  task = gan_task.make_gan_task(config, info)
  opts = make_optimizers(config.optim, task.parts, config.train.num_steps)
  make = state_lib.state_factory(task, opts, shape, True, 0, config.train.ema_decay > 0)
  state = jax.eval_shape(make)
  batch = {
    "image": jax.ShapeDtypeStruct((config.batch_size, *shape), jnp.uint8),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  new_state, metrics = jax.eval_shape(
    make_train_step(task, opts, loop.step_config(config)), state, batch
  )
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  assert {"disc/loss", "gen/loss", "disc/d_real", "gen/d_fake"} <= set(metrics)
  wgan = "transgan" in name or "wgan" in arg
  assert (config.optim.disc.b1, config.optim.gen.b1) == ((0, 0) if wgan else (0.5, 0.5))
  if wgan:  # WGAN-GP / TransGAN: several critic updates, each on its own real rows
    assert task.gp_weight == 10.0 and config.train.split_repeats
    assert config.train.part_steps.disc > 1 and task.gen_batch_div == config.train.part_steps.disc
  samples = jax.eval_shape(lambda v: task.sample(v, jax.random.key(0), 16), state.variables())
  assert samples["images"].shape == (16, *shape) and samples["images"].dtype == jnp.uint8


def test_transgan_cifar10_config_is_the_paper_recipe():
  """The final TransGAN: G 1024 -> 256 -> 64 wide with relative positions and per-stage RGB,
  multi-scale D; 4 critic updates on their own 64 real images each, 128 latents for G."""
  config = _load("transgan_cifar10")
  task = gan_task.make_gan_task(config, data.DatasetInfo((32, 32, 3), 10, 50_000, 10_000))
  shapes = jax.eval_shape(task.init, jax.random.key(0), state_lib.example_batch((32, 32, 3), True))
  counts = {p: sum(x.size for x in jax.tree.leaves(v["params"])) for p, v in shapes.items()}
  assert 75e6 < counts["gen"] < 90e6 and 8e6 < counts["disc"] < 12e6, counts
  assert config.train.part_steps.disc == 4 and config.train.ema_decay == 0.9999
  assert (task.loss_type, task.gp_weight, task.drift_weight) == ("wgan", 10.0, 1e-3)
  assert task.diffaug == ("translation", "cutout", "color")
  assert config.train.split_repeats and config.batch_size // 4 == 64  # dis_bs
  assert config.batch_size * task.gen_batch_mult // task.gen_batch_div == 128  # gen_bs
  assert task.ema_parts == ("gen",)


# research.main with the GAN modules imported explicitly (works before and after the package
# __init__ files import them).
_MAIN = (
  "import research.models.gan, research.models.transgan, research.tasks.gan; "
  "from research import main; from absl import app; "
  "app.run(main.main, flags_parser=main.parse_flags)"
)


def _run_main(workdir, data_dir, *flags):
  cmd = [
    sys.executable,
    "-c",
    _MAIN,
    f"--config={os.path.join(REPO, 'experiments', 'dcgan_mnist.py')}:runlocal",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *flags,
  ]
  proc = subprocess.run(
    cmd, env=subprocess_env(data_dir), capture_output=True, text=True, timeout=300, cwd=REPO
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_dcgan_mnist_runlocal_trains_and_samples(tmp_path, data_dir):
  workdir = str(tmp_path)
  flags = [
    "--config.batch_size=16",
    "--config.train.checkpoint_every=3",
    "--config.train.sample_every=3",
    "--config.train.log_every=3",
    "--config.sample.num_samples=16",
    "--config.eval.batch_size=200",
    "--config.eval.classifier_steps=30",  # the nearest-neighbour picture's classifier, in seconds
  ]
  _run_main(workdir, data_dir, "--config.train.num_steps=6", *flags)
  assert sorted(os.listdir(tmp_path / "samples")) == ["step_0000003.png", "step_0000006.png"]
  _run_main(workdir, data_dir, "--mode=sample", *flags)
  samples = np.load(tmp_path / "samples.npz")
  assert samples["images"].shape == (16, 28, 28, 1) and samples["images"].dtype == np.uint8
  assert os.path.exists(tmp_path / "samples.png")
  assert os.path.exists(tmp_path / "nearest_neighbours.png")
