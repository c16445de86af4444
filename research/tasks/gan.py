"""Generative adversarial networks (Goodfellow et al. 2014) as a two-part task on the shared step.

The train state has two parts, updated in this order each step: ``"disc"`` (``train.part_steps.disc``
times, each with fresh z and augmentations) then ``"gen"``, which sees the discriminator just
updated. The shared step differentiates each part's loss with respect to that part's parameters
only; the generator's loss backpropagates *through* the (fixed) discriminator into the generator.

Batches: ``config.batch_size`` is the real images one training step consumes. With
``train.split_repeats`` each of the n critic updates takes its own strided 1/n of them (the paper's
dis_bs = batch_size / n, a fresh real batch per critic iteration as in WGAN-GP's Algorithm 1);
otherwise every critic update reuses the whole batch. The generator's update draws
``gen_batch_mult`` x dis_bs latents (TransGAN's gen_bs = 2 x dis_bs). Only the generator keeps an
EMA (``train.ema_decay``); samples and evaluation use it, with D's weights as trained.

Normalisation state (BatchNorm statistics and spectral-norm vectors, both in ``batch_stats``):
- D's update: reals and fakes go through D as two separate batches (DCGAN practice), each
  normalised with its own batch statistics; D's running averages and spectral-norm ``u`` are
  updated by both calls (reals first). The fakes come from G in training mode (batch statistics);
  G's state is left as it was.
- G's update: G runs with batch statistics and its running averages are updated; D judges the fakes
  with batch statistics, exactly as in its own update, but D's state is left as it was. So each
  network's state changes only in its own update, and never outside training.
- Sampling and evaluation (with the generator's EMA weights): ``task.sample_bn="batch"`` (default)
  normalises with the statistics of the sample batch, as G always did in training; the running
  averages were accumulated under the raw weights, not the EMA weights, and lag early in training.
  ``"running"`` uses them instead. Samples of one call are then not independent of each other:
  draw them in batches of 64 or more.

Regularisers: WGAN-GP (``gp_weight``, Gulrajani et al. 2017) on interpolates; TransGAN's drift
``drift_weight * E d(x)^2``; R1 (``r1_gamma``, Mescheder et al. 2018) on reals, every ``r1_every``
steps scaled by ``r1_every`` (StyleGAN2's lazy regularisation). DiffAugment (``diffaug``) is part of
D: every input D sees, real, fake or interpolate, is augmented, and penalties differentiate through
the augmentation with respect to the unaugmented input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import diffaug, gan_losses, pixels
from research.tasks.base import Batch, Metrics, Variables, masked_sums, means, options

LATENT_DISTS = ("normal", "uniform")
SAMPLE_BN = ("batch", "running")


@dataclasses.dataclass(frozen=True)
class GANTask:
  generator: nn.Module
  discriminator: nn.Module
  latent_dim: int = 100
  num_classes: int = 0  # > 0: class-conditional G and projection D
  loss_type: str = "non_saturating"  # one of gan_losses.LOSSES
  gp_weight: float = 0.0  # lambda of WGAN-GP (10 in Gulrajani et al.)
  drift_weight: float = 0.0  # epsilon of E d(x)^2 (1e-3 in TransGAN / progressive GAN)
  r1_gamma: float = 0.0  # gamma of (gamma / 2) E ||grad d(x)||^2 on reals
  r1_every: int = 1  # lazy R1: every k steps, scaled by k
  diffaug: tuple[str, ...] = ()  # DiffAugment policy, e.g. ("translation", "cutout", "color")
  latent_dist: str = "normal"  # "normal" N(0, I) | "uniform" U[-1, 1] (DCGAN)
  sample_bn: str = "batch"  # generator normalisation when sampling: "batch" | "running"
  # Fakes in G's update = rows G's update sees x gen_batch_mult / gen_batch_div. The config gives
  # gen_bs / dis_bs (TransGAN: 128 / 64 = 2); with train.split_repeats G sees n_critic x dis_bs
  # rows, so make_gan_task sets gen_batch_div = n_critic.
  gen_batch_mult: int = 1
  gen_batch_div: int = 1
  parts: ClassVar[tuple[str, ...]] = ("disc", "gen")
  ema_parts: ClassVar[tuple[str, ...]] = ("gen",)  # D's weights are used as trained (d_auc too)

  # ---- data and networks -------------------------------------------------------------------------
  def real(self, batch: Batch) -> jax.Array:
    """The discriminator's real input: uint8 images [B, H, W, C] -> float32 in [-1, 1]."""
    return pixels.to_signed(batch["image"])

  def labels(self, batch: Batch) -> jax.Array | None:
    return batch["label"] if self.num_classes else None

  def latents(self, rng: jax.Array, n: int) -> jax.Array:  # [n, Z]
    if self.latent_dist == "uniform":
      return jax.random.uniform(rng, (n, self.latent_dim), minval=-1.0, maxval=1.0)
    return jax.random.normal(rng, (n, self.latent_dim))

  def generate(
    self, gen: dict[str, Any], z: jax.Array, y: jax.Array | None, batch_stats: bool = True
  ) -> tuple[jax.Array, dict[str, Any]]:
    """G(z) [n, ...] and G's updated collections; `batch_stats=False`: running averages, none."""
    if not batch_stats:
      return self.generator.apply(gen, z, y, train=False), {}
    out, updated = self.generator.apply(gen, z, y, train=True, mutable=["batch_stats"])
    return out, dict(updated)

  def disc(
    self, disc: dict[str, Any], x: jax.Array, y: jax.Array | None, rng: jax.Array
  ) -> tuple[jax.Array, dict[str, Any]]:
    """D(augment(x)) logits [B] in training mode, and D's variables with updated collections."""
    x = diffaug.diff_augment(x, rng, self.diffaug)
    logits, updated = self.discriminator.apply(disc, x, y, train=True, mutable=["batch_stats"])
    return logits, {**disc, **updated}

  # ---- the Task protocol -------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = self.real(batch)
    y = jnp.zeros(x.shape[:1], jnp.int32) if self.num_classes else None
    g_key, d_key = jax.random.split(rng)
    z = jnp.zeros((x.shape[0], self.latent_dim))
    return {
      "disc": dict(self.discriminator.init(d_key, x, y, train=False)),
      "gen": dict(self.generator.init(g_key, z, y, train=False)),
    }

  def loss(
    self,
    part: str,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    train: bool,
    step: jax.Array,
  ) -> tuple[jax.Array, Metrics, Variables]:
    if part == "disc":
      return self._disc_loss(variables, batch, rng, train, step)
    if part == "gen":
      return self._gen_loss(variables, batch, rng, train)
    raise ValueError(f"unknown part {part!r}; a GAN has {self.parts}")

  def _disc_loss(
    self, variables: Variables, batch: Batch, rng: jax.Array, train: bool, step: jax.Array
  ) -> tuple[jax.Array, Metrics, Variables]:
    z_key, real_key, fake_key, gp_key = jax.random.split(rng, 4)
    real, y = self.real(batch), self.labels(batch)
    fake, _ = self.generate(variables["gen"], self.latents(z_key, real.shape[0]), y)
    fake = jax.lax.stop_gradient(fake)
    d0 = variables["disc"]
    d_real_fn = lambda x: self.disc(d0, x, y, real_key)
    metrics: Metrics = {}
    if self.r1_gamma and self.r1_every == 1:  # one forward pass gives the logits and the R1 term
      r1, d_real, d1 = gan_losses.r1_penalty(d_real_fn, real)
    else:
      d_real, d1 = d_real_fn(real)
      r1 = jnp.zeros((), jnp.float32)
      if self.r1_gamma:
        r1 = gan_losses.lazy_r1(d_real_fn, real, step, self.r1_every)
    d_fake, d2 = self.disc(d1, fake, y, fake_key)
    adversarial = gan_losses.disc_loss(self.loss_type, d_real, d_fake)
    loss = adversarial
    if self.r1_gamma:
      loss = loss + 0.5 * self.r1_gamma * r1  # Mescheder et al. 2018, eq. 9
      metrics["r1"] = r1
    if self.gp_weight:
      d_fn = lambda x: self.disc(d0, x, y, jax.random.fold_in(gp_key, 1))
      gp = gan_losses.gradient_penalty(d_fn, real, fake, gp_key)
      loss = loss + self.gp_weight * gp
      metrics["gp"] = gp
    if self.drift_weight:
      loss = loss + self.drift_weight * jnp.mean(jnp.square(d_real))
    metrics.update(
      adversarial=adversarial,
      d_real=jnp.mean(d_real),
      d_fake=jnp.mean(d_fake),
      accuracy=0.5 * (jnp.mean(d_real > 0) + jnp.mean(d_fake < 0)),
    )
    updated = {"disc": {k: v for k, v in d2.items() if k != "params"}} if train else {}
    return loss, metrics, updated

  def _gen_loss(
    self, variables: Variables, batch: Batch, rng: jax.Array, train: bool
  ) -> tuple[jax.Array, Metrics, Variables]:
    z_key, aug_key = jax.random.split(rng)
    b = self.real(batch).shape[0]
    if (b * self.gen_batch_mult) % self.gen_batch_div:
      raise ValueError(
        f"{b} rows x gen_batch_mult {self.gen_batch_mult} do not divide by {self.gen_batch_div}"
      )
    n = b * self.gen_batch_mult // self.gen_batch_div  # the generator's batch
    y = self.labels(batch)
    if y is not None and n != b:
      y = jnp.resize(y, (n,))  # the batch's labels, cut or repeated: [n]
    z = self.latents(z_key, n)
    fake, g_updated = self.generate(variables["gen"], z, y)
    d_fake, _ = self.disc(variables["disc"], fake, y, aug_key)  # D's state is not updated here
    loss = gan_losses.gen_loss(self.loss_type, d_fake)
    return loss, {"d_fake": jnp.mean(d_fake)}, ({"gen": g_updated} if train else {})

  def _sample_labels(self, num: int) -> jax.Array | None:
    return jnp.arange(num, dtype=jnp.int32) % self.num_classes if self.num_classes else None

  def _images(self, gen: dict[str, Any], z: jax.Array, y: jax.Array | None) -> jax.Array:
    """uint8 [n, H, W, C] from G (as `sample_bn` says)."""
    x, _ = self.generate(gen, z, y, batch_stats=self.sample_bn == "batch")
    return pixels.from_signed(x)

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    y = self._sample_labels(num)  # class i % num_classes for sample i
    out = {"images": self._images(variables["gen"], self.latents(rng, num), y)}
    if y is not None:
      out["labels"] = y
    return out

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums over one eval batch: D's logits on reals and on as many fresh fakes.

    D runs as in training (batch statistics; reals and fakes as separate batches, so padding
    rows of a last partial batch enter its statistics), on one fresh fake per real.
    """
    real, y = self.real(batch), self.labels(batch)
    z = self.latents(rng, real.shape[0])
    fake, _ = self.generate(variables["gen"], z, y, self.sample_bn == "batch")
    d_real, _ = self.disc(variables["disc"], real, y, jax.random.fold_in(rng, 1))
    d_fake, _ = self.disc(variables["disc"], fake, y, jax.random.fold_in(rng, 2))
    m = batch["mask"]
    # Per real image: the fraction of the batch's fakes that D scores below it.
    above = jnp.sum((d_real[:, None] > d_fake[None, :]) * m[None, :], axis=1) / jnp.sum(m)
    correct = 0.5 * ((d_real > 0).astype(jnp.float32) + (d_fake < 0).astype(jnp.float32))
    per_example = {"d_real": d_real, "d_fake": d_fake, "correct": correct, "auc": above}
    return masked_sums(per_example, m)

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    """How well D separates held-out reals from G's samples (the FID/KID suite is separate).

    ``d_accuracy`` thresholds the logit at 0 (meaningful for minimax, non-saturating and hinge);
    ``d_auc`` is the fraction of (real, fake) pairs of a batch that D orders correctly, for any
    loss. Near 0.5: D cannot tell G's samples from held-out images.
    """
    m = means(totals)
    return {
      "d_real_mean": m["d_real"],
      "d_fake_mean": m["d_fake"],
      "d_accuracy": m["correct"],
      "d_auc": m["auc"],
      "num_examples": m["num_examples"],
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Class-conditional models: ``class_grid.png``, one row per class, one shared z per column."""
    if not self.num_classes:
      return {}
    cols = 10
    z = jnp.tile(self.latents(rng, cols), (self.num_classes, 1))  # [classes * cols, Z]
    y = jnp.repeat(jnp.arange(self.num_classes, dtype=jnp.int32), cols)
    images = self._images(variables["gen"], z, y)
    _, h, w, c = images.shape
    return {"class_grid.png": pixels.tile(images.reshape(self.num_classes, cols, h, w, c))}


@TASKS.register("gan")
def make_gan_task(config: Any, info: data.DatasetInfo) -> GANTask:
  t, m = config.task, config.model
  for key in ("generator", "discriminator"):
    if key not in m:
      raise UserError(f"config.model.{key} is missing; a GAN needs a generator and discriminator")
  loss = t.get("loss", GANTask.loss_type)  # config keys the task reads under other names
  conditional = bool(t.get("conditional", False))
  try:
    policy = diffaug.parse_policy(t.get("diffaug", ""))
  except ValueError as e:
    raise UserError(f"config.task.diffaug: {e}") from None
  if conditional and not info.num_classes:
    raise UserError(
      f"config.task.conditional is set but {config.data.name} has no labels; set it to False"
    )
  critic_steps = int(config.train.part_steps.get("disc", 1))
  split = bool(config.train.split_repeats) and critic_steps > 1
  num_classes = info.num_classes if conditional else 0
  common = {"num_classes": num_classes, "dtype": m.get("dtype", "float32")}
  gen_fields = {**m.generator.to_dict(), **common, "image_shape": info.image_shape}
  disc_fields = {**m.discriminator.to_dict(), **common}
  computed = ("generator", "discriminator", "num_classes", "gen_batch_div", "diffaug", "loss_type")
  task = GANTask(
    generator=build_module(gen_fields, "config.model.generator"),
    discriminator=build_module(disc_fields, "config.model.discriminator"),
    num_classes=num_classes,
    loss_type=loss,
    diffaug=policy,
    gen_batch_div=critic_steps if split else 1,
    **options(GANTask, t, computed=(*computed, "loss", "conditional")),
  )
  if task.loss_type not in gan_losses.LOSSES:
    raise UserError(f"unknown GAN loss {loss!r} in config.task.loss; use {gan_losses.LOSSES}")
  if task.latent_dist not in LATENT_DISTS:
    raise UserError(f"config.task.latent_dist={task.latent_dist!r}; use one of {LATENT_DISTS}")
  if task.sample_bn not in SAMPLE_BN:
    raise UserError(f"config.task.sample_bn={task.sample_bn!r}; use one of {SAMPLE_BN}")
  if task.r1_every < 1 or task.gen_batch_mult < 1:
    raise UserError("config.task.r1_every and config.task.gen_batch_mult must be >= 1")
  if (config.batch_size * task.gen_batch_mult) % (task.gen_batch_div * config.train.grad_accum):
    raise UserError(
      f"config.batch_size={config.batch_size} x config.task.gen_batch_mult="
      f"{task.gen_batch_mult} does not divide by {task.gen_batch_div} critic chunks x "
      f"{config.train.grad_accum} micro-batches"
    )
  return task
