"""pix2pix (Isola et al. 2017): paired image-to-image translation as a two-part GAN on the shared step.

Batches carry the condition ``input`` (a sketch, a label map, edges: uint8 [B, H, W, C_in]) and
its target ``image`` (uint8 [B, H, W, C]); see `research.data.pipeline`. Parts, updated in this
order each step (as `research.tasks.gan`):

- ``disc``: the conditional PatchGAN D(input, ·) judges (input, target) pairs as real and
  (input, G(input)) pairs as fake, never the output alone (``conditional_disc``; False is the
  paper's unconditional-D ablation). Its loss, averaged over patches, is scaled by
  ``disc_loss_scale`` = 0.5 (sec. 3.3: "we divide the objective by 2 while optimizing D").
- ``gen``: the U-Net G minimises the adversarial loss plus ``l1_weight`` (lambda = 100, eq. 4)
  times the mean |target - G(input)|, on the [-1, 1] scale. The L1 term enters only G's loss.

Noise is dropout in G's decoder, kept on at test time (sec. 2.1): every generator call gets a
``dropout`` key. Normalisation: G and D use batch statistics in training; each network's running
averages change only in its own update. At test time (``test_bn="batch"``, the paper's choice,
sec. 3.1) G normalises with the statistics of the test batch, which at batch 1 is instance
normalisation; ``"running"`` uses the running averages instead.

Sample mode and the sample metrics translate held-out inputs: the factory reads the first
``config.eval.num_samples`` examples of ``config.data.eval_split`` once (host arrays, like DALL-E's
sample captions), and ``sample`` returns ``images`` (the translations), ``inputs``, ``targets``
and, when the dataset has classes, ``labels``. So FID is outputs vs the held-out targets (the
reference split), and label agreement is the share of outputs the digits classifier reads as the
sketched digit. Held-out metrics (`eval_sums`): L1, PSNR and SSIM to the targets, next to the L1
of two baselines: the mean held-out target (the best constant image under squared error) and the
input itself (when it has the target's channels).
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
from research.tasks import gan_losses, pixels, translation_metrics
from research.tasks.base import Batch, Metrics, Variables, masked_sums, means, options

TEST_BN = ("batch", "running")


@dataclasses.dataclass(frozen=True)
class HeldOutPairs:
  """The first held-out examples, on the host: what sample mode translates."""

  inputs: np.ndarray  # uint8 [N, H, W, C_in]
  targets: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray | None  # int32 [N], or None without classes

  @property
  def mean_target(self) -> np.ndarray:  # float32 [H, W, C] in [-1, 1]
    return (self.targets.astype(np.float64).mean(0) / 127.5 - 1.0).astype(np.float32)


def translation_picture(inputs: jax.Array, outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """uint8 [N, H, W, *] x 3 -> one picture whose row i is input i | output i | target i."""
  c = max(inputs.shape[-1], outputs.shape[-1], targets.shape[-1])
  widen = lambda x: jnp.broadcast_to(x, (*x.shape[:3], c)) if x.shape[-1] == 1 else x
  return pixels.tile(jnp.stack([widen(inputs), widen(outputs), widen(targets)], axis=1))


@dataclasses.dataclass(frozen=True, eq=False)
class Pix2PixTask:
  generator: nn.Module
  discriminator: nn.Module
  loss_type: str = "non_saturating"  # one of gan_losses.LOSSES; the paper's is non_saturating
  l1_weight: float = 100.0  # lambda of eq. 4
  disc_loss_scale: float = 0.5  # D's objective divided by 2 (sec. 3.3)
  conditional_disc: bool = True  # D sees (input, image) pairs; False: the image alone (ablation)
  test_bn: str = "batch"  # G's normalisation at test time: "batch" (the paper) | "running"
  picture_rows: int = 8  # examples in translation.png
  held_out: HeldOutPairs | None = None  # set by the factory; sample mode needs it
  parts: ClassVar[tuple[str, ...]] = ("disc", "gen")
  ema_parts: ClassVar[tuple[str, ...]] = ("gen",)  # used only when train.ema_decay > 0

  # ---- networks ----------------------------------------------------------------------------------
  def generate(
    self, gen: dict[str, Any], x: jax.Array, rng: jax.Array, *, train: bool
  ) -> tuple[jax.Array, dict[str, Any]]:
    """G(x) float32 [B, H, W, C] in [-1, 1] and G's updated collections (none unless `train`).

    Batch statistics in training and with ``test_bn="batch"``; dropout always (its own key).
    """
    rngs = {"dropout": rng}
    if train:
      out, updated = self.generator.apply(gen, x, train=True, rngs=rngs, mutable=["batch_stats"])
      return out, dict(updated)
    if self.test_bn == "batch":
      out, _ = self.generator.apply(gen, x, train=True, rngs=rngs, mutable=["batch_stats"])
      return out, {}
    return self.generator.apply(gen, x, train=False, rngs=rngs), {}

  def judge(
    self, disc: dict[str, Any], image: jax.Array, cond: jax.Array
  ) -> tuple[jax.Array, dict[str, Any]]:
    """D's patch logits [B, h, w] on (cond, image) in training mode, and D's updated variables."""
    c = cond if self.conditional_disc else None
    logits, updated = self.discriminator.apply(disc, image, c, train=True, mutable=["batch_stats"])
    return logits, {**disc, **updated}

  # ---- the Task protocol -------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x, y = pixels.to_signed(batch["input"]), pixels.to_signed(batch["image"])
    g_key, d_key, drop_key = jax.random.split(rng, 3)
    gen = self.generator.init({"params": g_key, "dropout": drop_key}, x, train=False)
    disc = self.discriminator.init(d_key, y, x if self.conditional_disc else None, train=False)
    return {"disc": dict(disc), "gen": dict(gen)}

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
    del step
    x, y = pixels.to_signed(batch["input"]), pixels.to_signed(batch["image"])
    if part == "disc":
      fake, _ = self.generate(variables["gen"], x, rng, train=True)  # G's state is left alone
      d_real, d1 = self.judge(variables["disc"], y, x)
      d_fake, d2 = self.judge(d1, jax.lax.stop_gradient(fake), x)
      adversarial = gan_losses.disc_loss(self.loss_type, d_real, d_fake)
      metrics = {
        "adversarial": adversarial,
        "d_real": jnp.mean(d_real),
        "d_fake": jnp.mean(d_fake),
      }
      updated = {"disc": {k: v for k, v in d2.items() if k != "params"}} if train else {}
      return self.disc_loss_scale * adversarial, metrics, updated
    if part == "gen":
      fake, g_updated = self.generate(variables["gen"], x, rng, train=True)
      d_fake, _ = self.judge(variables["disc"], fake, x)  # D's state is not updated here
      adversarial = gan_losses.gen_loss(self.loss_type, d_fake)
      l1 = jnp.mean(jnp.abs(y - fake))  # eq. 3, on [-1, 1]
      metrics = {"adversarial": adversarial, "l1": l1, "d_fake": jnp.mean(d_fake)}
      loss = adversarial + self.l1_weight * l1
      return loss, metrics, ({"gen": g_updated} if train else {})
    raise ValueError(f"unknown part {part!r}; pix2pix has {self.parts}")

  def translate(self, variables: Variables, inputs: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 inputs [B, H, W, C_in] -> uint8 translations [B, H, W, C], as at test time."""
    out, _ = self.generate(variables["gen"], pixels.to_signed(inputs), rng, train=False)
    return pixels.from_signed(out)

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """Translations of held-out inputs: sample i translates held-out example i mod N."""
    if self.held_out is None:
      raise UserError("this pix2pix task has no held-out inputs to translate; build it with data")
    which = np.arange(num) % len(self.held_out.inputs)  # host indices: constants of the program
    inputs = jnp.asarray(self.held_out.inputs[which])
    out = {
      "images": self.translate(variables, inputs, rng),
      "inputs": inputs,
      "targets": jnp.asarray(self.held_out.targets[which]),
    }
    if self.held_out.labels is not None:
      out["labels"] = jnp.asarray(self.held_out.labels[which], jnp.int32)
    return out

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums of L1 (on [0, 1]), PSNR and SSIM of the translations, and the baselines' L1."""
    out = pixels.to_unit(self.translate(variables, batch["input"], rng))
    target = pixels.to_unit(batch["image"])
    per_example = {
      "l1": translation_metrics.l1(out, target),
      "psnr": translation_metrics.psnr(out, target),
      "ssim": translation_metrics.ssim(out, target),
    }
    if self.held_out is not None:
      mean = (jnp.asarray(self.held_out.mean_target) + 1.0) / 2.0  # [H, W, C] in [0, 1]
      per_example["l1_mean_target"] = translation_metrics.l1(
        jnp.broadcast_to(mean, out.shape), target
      )
    if batch["input"].shape == batch["image"].shape:
      per_example["l1_input"] = translation_metrics.l1(pixels.to_unit(batch["input"]), target)
    return masked_sums(per_example, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    return means(totals)

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """``translation.png``: rows of held-out input | output | target."""
    k = min(self.picture_rows, batch["input"].shape[0])
    inputs, targets = batch["input"][:k], batch["image"][:k]
    outputs = self.translate(variables, inputs, rng)
    return {"translation.png": translation_picture(inputs, outputs, targets)}


def read_held_out(config: Any, info: data.DatasetInfo, what: str) -> HeldOutPairs:
  """The first ``config.eval.num_samples`` held-out (input, image, label) examples, on the host."""
  if info.input_shape is None:
    raise UserError(
      f"{config.data.name} has no 'input' images; {what} needs paired data such as "
      "offline_sketched_digits or pix2pix/facades"
    )
  rows = data.held_out_examples(config.data, int(config.eval.num_samples))
  labels = rows.get("label")
  return HeldOutPairs(
    inputs=rows["input"],
    targets=rows["image"],
    labels=None if labels is None else labels.astype(np.int32),
  )


def check_loss(loss_type: str) -> None:
  if loss_type not in gan_losses.LOSSES:
    raise UserError(f"unknown GAN loss {loss_type!r} in config.task.loss; use {gan_losses.LOSSES}")


@TASKS.register("pix2pix")
def make_pix2pix_task(config: Any, info: data.DatasetInfo) -> Pix2PixTask:
  t, m = config.task, config.model
  for key in ("generator", "discriminator"):
    if key not in m:
      raise UserError(f"config.model.{key} is missing; pix2pix needs a generator and discriminator")
  held_out = read_held_out(config, info, "pix2pix")
  dtype = {"dtype": m.get("dtype", "float32")}
  gen_fields = {**m.generator.to_dict(), **dtype, "out_channels": info.image_shape[-1]}
  task = Pix2PixTask(
    generator=build_module(gen_fields, "config.model.generator"),
    discriminator=build_module(
      {**m.discriminator.to_dict(), **dtype}, "config.model.discriminator"
    ),
    loss_type=t.get("loss", Pix2PixTask.loss_type),
    held_out=held_out,
    **options(Pix2PixTask, t, computed=("generator", "discriminator", "held_out", "loss")),
  )
  check_loss(task.loss_type)
  if task.test_bn not in TEST_BN:
    raise UserError(f"config.task.test_bn={task.test_bn!r}; use one of {TEST_BN}")
  return task
