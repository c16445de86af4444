"""CycleGAN (Zhu et al. 2017): unpaired translation between domains A and B on the shared step.

Batches (`research.data.pipeline`, unpaired mode) carry ``input``: images of domain A, and
``image``: images of domain B, drawn independently (eval batches mask them with ``input_mask`` and
``mask``). Four named parts of one train state, updated in this order each step:

- ``gen_ab`` (G: A -> B) and ``gen_ba`` (F: B -> A) minimise eq. 3 of the paper: the LSGAN
  generator loss under the other domain's discriminator (sec. 4, "Training details"), plus
  ``cycle_weight`` (lambda = 10) times the cycle L1 of both directions (eq. 2), plus
  ``identity_weight`` x lambda (0.5 x 10 in the reference code) times |G(b) - b| (sec. 5.2). Each
  generator's update differentiates only the terms its parameters enter, with the other generator
  held fixed (the shared step's rule), so its loss is the part of eq. 3 that depends on it; the
  second generator sees the first's new weights, an alternating version of the code's joint Adam
  step on both.
- ``disc_a`` and ``disc_b``: 70x70 PatchGANs on single images, LSGAN loss scaled by
  ``disc_loss_scale`` = 0.5, on real images of their domain and on fakes drawn from a history of
  ``pool_size`` = 50 generated images (Shrivastava et al. 2017; the reference code's ImagePool).
  The fakes are made afresh from the just-updated generators.

The history buffer lives in each discriminator's variables as the ``history`` collection
(``images`` float32 [pool_size, H, W, C], ``count`` int32 []), so it is checkpointed with the
state and a resumed run continues exactly. For each new fake, in batch order: while the buffer
is not full the fake is stored and returned; once full, with probability 1/2 it replaces a random
stored image and the stored one is returned, otherwise the fake itself is returned.

Sample mode translates held-out A images (``images`` = G(a), ``inputs`` = a); ``translation.png``
shows rows a | G(a) | F(G(a)) and b | F(b) | G(F(b)). Held-out metrics: the cycle L1 of each
domain and G's identity L1, on [0, 1].
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
from research.tasks.base import Batch, Metrics, Variables, options
from research.tasks.pix2pix import check_loss, translation_picture

# part -> (the generator it trains or judges, source batch key, target batch key)
_DIRECTION = {"gen_ab": ("input", "image"), "gen_ba": ("image", "input")}
_OTHER = {"gen_ab": "gen_ba", "gen_ba": "gen_ab"}
_JUDGE = {"gen_ab": "disc_b", "gen_ba": "disc_a"}  # D of the generator's output domain
_FAKES_OF = {"disc_b": "gen_ab", "disc_a": "gen_ba"}  # the generator whose outputs D judges


def empty_history(size: int, image_shape: tuple[int, ...]) -> dict[str, jax.Array]:
  return {
    "images": jnp.zeros((size, *image_shape), jnp.float32),
    "count": jnp.zeros((), jnp.int32),
  }


def query_history(
  history: dict[str, jax.Array], fakes: jax.Array, rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The images D sees instead of `fakes` [B, H, W, C], and the updated history (see top)."""
  size = history["images"].shape[0]

  def one(carry, xs):
    images, count = carry
    fake, key = xs
    swap_key, index_key = jax.random.split(key)
    full = count >= size
    swap = full & (jax.random.uniform(swap_key) < 0.5)
    index = jnp.where(
      full, jax.random.randint(index_key, (), 0, size), jnp.minimum(count, size - 1)
    )
    stored = images[index]
    images = images.at[index].set(jnp.where(full & ~swap, stored, fake))
    return (images, jnp.minimum(count + 1, size)), jnp.where(swap, stored, fake)

  keys = jax.random.split(rng, fakes.shape[0])
  (images, count), out = jax.lax.scan(one, (history["images"], history["count"]), (fakes, keys))
  return out, {"images": images, "count": count}


@dataclasses.dataclass(frozen=True, eq=False)
class CycleGANTask:
  gen_ab: nn.Module
  gen_ba: nn.Module
  disc_a: nn.Module
  disc_b: nn.Module
  loss_type: str = "lsgan"  # sec. 4: least-squares GAN loss
  cycle_weight: float = 10.0  # lambda of eq. 3
  identity_weight: float = 0.5  # x cycle_weight: the reference code's lambda_identity
  disc_loss_scale: float = 0.5
  pool_size: int = 50  # history of generated images per discriminator; 0 = off
  picture_rows: int = 4  # examples per domain in translation.png
  held_out_inputs: np.ndarray | None = None  # uint8 [N, H, W, C]: held-out A images (sample)
  parts: ClassVar[tuple[str, ...]] = ("gen_ab", "gen_ba", "disc_a", "disc_b")
  ema_parts: ClassVar[tuple[str, ...]] = ("gen_ab", "gen_ba")  # when train.ema_decay > 0

  def _module(self, part: str) -> nn.Module:
    return getattr(self, part)

  def generate(
    self, variables: Variables, part: str, x: jax.Array, rng: jax.Array, *, train: bool
  ) -> tuple[jax.Array, dict[str, Any]]:
    """Generator `part` on x in [-1, 1]: its output and updated collections (when `train`)."""
    out, updated = self._module(part).apply(
      variables[part], x, train=train, rngs={"dropout": rng}, mutable=["batch_stats"]
    )
    return out, (dict(updated) if train else {})

  def judge(self, variables: Variables, part: str, x: jax.Array) -> tuple[jax.Array, dict]:
    """Discriminator `part`'s patch logits [B, h, w] in training mode, and its updated stats."""
    logits, updated = self._module(part).apply(
      variables[part], x, None, train=True, mutable=["batch_stats"]
    )
    return logits, dict(updated)

  # ---- the Task protocol -------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    a, b = pixels.to_signed(batch["input"]), pixels.to_signed(batch["image"])
    keys = jax.random.split(rng, 5)
    out = {
      "gen_ab": self.gen_ab.init({"params": keys[0], "dropout": keys[4]}, a, train=False),
      "gen_ba": self.gen_ba.init({"params": keys[1], "dropout": keys[4]}, b, train=False),
      "disc_a": self.disc_a.init(keys[2], a, None, train=False),
      "disc_b": self.disc_b.init(keys[3], b, None, train=False),
    }
    out = {k: dict(v) for k, v in out.items()}
    if self.pool_size:
      out["disc_a"]["history"] = empty_history(self.pool_size, a.shape[1:])
      out["disc_b"]["history"] = empty_history(self.pool_size, b.shape[1:])
    return out

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
    if part in _DIRECTION:
      return self._gen_loss(part, variables, batch, rng, train)
    if part in _FAKES_OF:
      return self._disc_loss(part, variables, batch, rng, train)
    raise ValueError(f"unknown part {part!r}; CycleGAN has {self.parts}")

  def _gen_loss(self, part, variables, batch, rng, train):
    src, dst = (pixels.to_signed(batch[k]) for k in _DIRECTION[part])
    other = _OTHER[part]
    keys = jax.random.split(rng, 4)
    fake, updated = self.generate(variables, part, src, keys[0], train=True)  # G(a)
    d_fake, _ = self.judge(variables, _JUDGE[part], fake)  # D_B's state is not updated here
    adversarial = gan_losses.gen_loss(self.loss_type, d_fake)
    rec_src, _ = self.generate(variables, other, fake, keys[1], train=True)  # F(G(a))
    other_fake, _ = self.generate(variables, other, dst, keys[2], train=True)  # F(b)
    rec_dst, _ = self.generate(variables, part, other_fake, keys[3], train=True)  # G(F(b))
    cycle = jnp.mean(jnp.abs(rec_src - src)) + jnp.mean(jnp.abs(rec_dst - dst))  # eq. 2
    loss = adversarial + self.cycle_weight * cycle
    metrics = {"adversarial": adversarial, "cycle": cycle, "d_fake": jnp.mean(d_fake)}
    if self.identity_weight:
      same, _ = self.generate(variables, part, dst, jax.random.fold_in(rng, 9), train=True)
      identity = jnp.mean(jnp.abs(same - dst))  # |G(b) - b|
      loss = loss + self.identity_weight * self.cycle_weight * identity
      metrics["identity"] = identity
    return loss, metrics, ({part: updated} if train else {})

  def _disc_loss(self, part, variables, batch, rng, train):
    gen = _FAKES_OF[part]
    src, real = (pixels.to_signed(batch[k]) for k in _DIRECTION[gen])
    gen_key, pool_key = jax.random.split(rng)
    fake, _ = self.generate(variables, gen, src, gen_key, train=True)
    fake = jax.lax.stop_gradient(fake)
    updated: dict[str, Any] = {}
    if self.pool_size:
      fake, updated["history"] = query_history(variables[part]["history"], fake, pool_key)
    d_real, stats = self.judge(variables, part, real)
    d_fake, stats = self.judge({part: {**variables[part], **stats}}, part, fake)
    adversarial = gan_losses.disc_loss(self.loss_type, d_real, d_fake)
    metrics = {"adversarial": adversarial, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    updated.update(stats)
    return self.disc_loss_scale * adversarial, metrics, ({part: updated} if train else {})

  def translate(self, variables: Variables, part: str, images: jax.Array, rng: jax.Array):
    """uint8 [B, H, W, C] of one domain -> uint8 translations by generator `part`."""
    out, _ = self.generate(variables, part, pixels.to_signed(images), rng, train=False)
    return pixels.from_signed(out)

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """G(a) for held-out A images: sample i translates held-out A image i mod N."""
    if self.held_out_inputs is None:
      raise UserError(
        "this CycleGAN task has no held-out A images to translate; build it with data"
      )
    inputs = jnp.asarray(self.held_out_inputs[np.arange(num) % len(self.held_out_inputs)])
    return {"images": self.translate(variables, "gen_ab", inputs, rng), "inputs": inputs}

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Sums of the cycle L1 per domain and G's identity L1 ([0, 1] scale), over real rows."""
    a, b = batch["input"], batch["image"]
    keys = jax.random.split(rng, 5)
    rec_a = self.translate(
      variables, "gen_ba", self.translate(variables, "gen_ab", a, keys[0]), keys[1]
    )
    rec_b = self.translate(
      variables, "gen_ab", self.translate(variables, "gen_ba", b, keys[2]), keys[3]
    )
    same_b = self.translate(variables, "gen_ab", b, keys[4])
    unit = pixels.to_unit
    mask_a, mask_b = batch["input_mask"], batch["mask"]
    return {
      "cycle_l1_a": jnp.sum(translation_metrics.l1(unit(rec_a), unit(a)) * mask_a),
      "cycle_l1_b": jnp.sum(translation_metrics.l1(unit(rec_b), unit(b)) * mask_b),
      "identity_l1_b": jnp.sum(translation_metrics.l1(unit(same_b), unit(b)) * mask_b),
      "count_a": jnp.sum(mask_a),
      "count": jnp.sum(mask_b),
    }

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    n_a, n_b = max(float(totals["count_a"]), 1.0), max(float(totals["count"]), 1.0)
    return {
      "cycle_l1_a": float(totals["cycle_l1_a"]) / n_a,
      "cycle_l1_b": float(totals["cycle_l1_b"]) / n_b,
      "identity_l1_b": float(totals["identity_l1_b"]) / n_b,
      "num_examples": float(totals["count"]),
      "num_examples_a": float(totals["count_a"]),
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    k = min(self.picture_rows, batch["input"].shape[0])
    a, b = batch["input"][:k], batch["image"][:k]
    keys = jax.random.split(rng, 4)
    fake_b = self.translate(variables, "gen_ab", a, keys[0])
    fake_a = self.translate(variables, "gen_ba", b, keys[1])
    rows_a = translation_picture(a, fake_b, self.translate(variables, "gen_ba", fake_b, keys[2]))
    rows_b = translation_picture(b, fake_a, self.translate(variables, "gen_ab", fake_a, keys[3]))
    return {"translation.png": jnp.concatenate([rows_a, rows_b], axis=0)}


@TASKS.register("cyclegan")
def make_cyclegan_task(config: Any, info: data.DatasetInfo) -> CycleGANTask:
  t, m = config.task, config.model
  for key in ("generator", "discriminator"):
    if key not in m:
      raise UserError(
        f"config.model.{key} is missing; CycleGAN needs a generator and discriminator"
      )
  if info.input_shape is None:
    raise UserError(
      f"{config.data.name} gives no domain-A 'input' images; set config.data.unpaired_split "
      "(e.g. split='trainA', unpaired_split='trainB')"
    )
  dtype = {"dtype": m.get("dtype", "float32")}
  gen = lambda channels: build_module(
    {**m.generator.to_dict(), **dtype, "out_channels": channels}, "config.model.generator"
  )
  disc = lambda: build_module({**m.discriminator.to_dict(), **dtype}, "config.model.discriminator")
  rows = data.held_out_examples(config.data, int(config.eval.num_samples))
  computed = ("gen_ab", "gen_ba", "disc_a", "disc_b", "held_out_inputs", "loss")
  task = CycleGANTask(
    gen_ab=gen(info.image_shape[-1]),
    gen_ba=gen(info.input_shape[-1]),
    disc_a=disc(),
    disc_b=disc(),
    loss_type=t.get("loss", CycleGANTask.loss_type),
    held_out_inputs=rows["input"],
    **options(CycleGANTask, t, computed=computed),
  )
  check_loss(task.loss_type)
  if task.pool_size < 0:
    raise UserError(f"config.task.pool_size={task.pool_size} is negative; use 0 (off) or 50")
  return task
