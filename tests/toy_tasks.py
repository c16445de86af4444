"""Small tasks used by the trainer tests: a one-part regression and a two-part adversarial toy."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


class Mlp(nn.Module):
  features: tuple[int, ...] = (32, 1)

  @nn.compact
  def __call__(self, x):
    for f in self.features[:-1]:
      x = nn.tanh(nn.Dense(f)(x))
    return nn.Dense(self.features[-1])(x)


class BNMlp(nn.Module):
  """An MLP with BatchNorm, to check that non-parameter collections flow through the step."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.tanh(x))


def _flat(batch):
  return batch["image"].astype(jnp.float32).reshape(batch["image"].shape[0], -1) / 255.0


@dataclasses.dataclass(frozen=True)
class RegressionTask:
  """Predict the label from the pixels, with noise injected from the step's rng."""

  parts: tuple[str, ...] = ("model",)
  ema_parts: tuple[str, ...] = ("model",)
  net: nn.Module = BNMlp()

  def init(self, rng, batch):
    return {"model": self.net.init(rng, _flat(batch), train=False)}

  def loss(self, part, variables, batch, rng, *, train, step=None):
    x = _flat(batch) + 0.01 * jax.random.normal(rng, _flat(batch).shape)
    pred, updated = self.net.apply(variables["model"], x, train=True, mutable=["batch_stats"])
    loss = jnp.mean((pred[:, 0] - batch["label"].astype(jnp.float32)) ** 2)
    return loss, {"mse": loss}, {"model": dict(updated)}

  def sample(self, variables, rng, num):
    return {"images": jnp.zeros((num, 2, 2, 1), jnp.uint8)}


@dataclasses.dataclass(frozen=True)
class TwoPlayerTask:
  """A tiny GAN on 1-D data: 'disc' then 'gen', each with its own optimizer, in one step."""

  parts: tuple[str, ...] = ("disc", "gen")
  ema_parts: tuple[str, ...] = ("disc", "gen")
  gen: nn.Module = Mlp((16, 2))
  disc: nn.Module = Mlp((16, 1))

  def init(self, rng, batch):
    g, d = jax.random.split(rng)
    return {
      "gen": self.gen.init(g, jnp.zeros((1, 4))),
      "disc": self.disc.init(d, jnp.zeros((1, 2))),
    }

  def _fake(self, variables, rng, n):
    return self.gen.apply(variables["gen"], jax.random.normal(rng, (n, 4)))

  def loss(self, part, variables, batch, rng, *, train, step=None):
    real = batch["point"]
    fake = self._fake(variables, rng, real.shape[0])
    if part == "disc":
      d_real = self.disc.apply(variables["disc"], real)
      d_fake = self.disc.apply(variables["disc"], fake)
      loss = jnp.mean(jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake))
    else:
      loss = jnp.mean(jax.nn.softplus(-self.disc.apply(variables["disc"], fake)))
    return loss, {}, {}

  def sample(self, variables, rng, num):
    return {"images": jnp.zeros((num, 2, 2, 1), jnp.uint8)}


@dataclasses.dataclass(frozen=True)
class LinearTask:
  """Deterministic least squares (no rng, no BatchNorm): accumulation must equal the full batch."""

  parts: tuple[str, ...] = ("model",)
  ema_parts: tuple[str, ...] = ("model",)
  net: nn.Module = Mlp((8, 1))

  def init(self, rng, batch):
    return {"model": self.net.init(rng, _flat(batch))}

  def loss(self, part, variables, batch, rng, *, train, step=None):
    pred = self.net.apply(variables["model"], _flat(batch))[:, 0]
    loss = jnp.mean((pred - batch["label"].astype(jnp.float32)) ** 2)
    return loss, {"mse": loss}, {}

  def sample(self, variables, rng, num):
    return {"images": jnp.zeros((num, 2, 2, 1), jnp.uint8)}


@dataclasses.dataclass(frozen=True)
class RecorderTask:
  """Records, in a non-parameter collection, the labels every loss call of each part received.

  Part p's ``seen`` is int32 [calls per step, rows per call]; call c of a step writes row c (a
  counter in the collection, reset each step by the test's reading it once per step).
  """

  calls: tuple[int, int] = (1, 1)  # loss calls per step of ("critic", "gen")
  rows: tuple[int, int] = (16, 16)  # rows each call sees
  parts: tuple[str, ...] = ("critic", "gen")
  ema_parts: tuple[str, ...] = ("critic", "gen")

  def init(self, rng, batch):
    return {
      p: {
        "params": {"w": jnp.zeros(())},
        "record": {"seen": jnp.full((c, r), -1, jnp.int32), "count": jnp.zeros((), jnp.int32)},
      }
      for p, c, r in zip(self.parts, self.calls, self.rows, strict=True)
    }

  def loss(self, part, variables, batch, rng, *, train, step=None):
    rec = variables[part]["record"]
    seen = rec["seen"].at[rec["count"] % rec["seen"].shape[0]].set(batch["label"])
    loss = variables[part]["params"]["w"] * jnp.mean(batch["label"].astype(jnp.float32))
    return loss, {}, {part: {"record": {"seen": seen, "count": rec["count"] + 1}}}

  def sample(self, variables, rng, num):
    return {"images": jnp.zeros((num, 2, 2, 1), jnp.uint8)}
