"""Denoising diffusion (Ho et al. 2020) as a task for the shared trainer.

Training minimises L_simple (Ho et al. eq. 14): the mean squared error between the network's output
and its target, epsilon (the paper) or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022),
at a uniformly drawn timestep. Images are scaled to [-1, 1]. With ``conditional``, labels are
replaced by the null label with probability ``label_dropout`` so that one network learns both the
conditional and the unconditional model (classifier-free guidance, Ho & Salimans 2022).

The denoiser is any registered network with the signature
``net(x_t [B,H,W,C], t int32 [B], label int32 [B] | None, *, train) -> [B,H,W,C]``; the task does not
know which (the DDPM UNet now, a diffusion transformer later).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research import data
from research.diffusion import likelihood, samplers, schedules
from research.errors import UserError
from research.eval import averages
from research.registry import TASKS, build_module
from research.tasks.base import Batch, Metrics, Variables

TARGETS = ("eps", "v")


def diffusion_fields(**overrides: Any) -> ml_collections.ConfigDict:
  """``config.task`` for diffusion, every field present so command-line overrides work."""
  fields = {
    "name": "diffusion",
    "schedule": "linear",  # linear (Ho et al.) | cosine (Nichol & Dhariwal)
    "timesteps": 1000,
    "target": "eps",  # eps | v
    "conditional": False,
    "label_dropout": 0.1,  # probability of the null label in training (conditional only)
    "loss_buckets": 10,  # per-timestep loss logged in this many equal ranges of t
    "eval_timesteps": 1000,  # terms of the bound evaluated per image (stratified; T = exact)
    "eval_variance": "beta",  # reverse-process variance in the bound: beta (the paper's) | beta_tilde
  }
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def sample_fields(**overrides: Any) -> ml_collections.ConfigDict:
  """``config.sample`` for diffusion."""
  fields = {
    "num_samples": 64,
    "grid_size": 64,
    "use_ema": True,
    "sampler": "ddim",  # ddim | ddpm (ancestral)
    "steps": 50,  # DDIM steps (ddpm always takes all T)
    "eta": 0.0,  # DDIM stochasticity: 0 deterministic, 1 = ancestral with beta-tilde
    "variance": "beta",  # ancestral variance: beta (sigma^2 = beta_t) | beta_tilde
    "guidance_scale": 0.0,  # w in (1 + w) eps(x, c) - w eps(x); 0 = the conditional model
    "clip_x0": True,
  }
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How `sample` draws images (from ``config.sample``; see `sample_fields`)."""

  sampler: str = "ddim"
  steps: int = 50
  eta: float = 0.0
  variance: str = "beta"
  guidance_scale: float = 0.0
  clip_x0: bool = True

  @classmethod
  def from_config(cls, c: Any) -> SamplerConfig:
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in c]
    if missing:
      raise UserError(f"config.sample lacks {missing}; build it with sample_fields()")
    if c.sampler not in ("ddim", "ddpm"):
      raise UserError(f"unknown sampler {c.sampler!r} in config.sample.sampler; use ddim or ddpm")
    return cls(**{n: c[n] for n in names})


@dataclasses.dataclass(frozen=True)
class DiffusionTask:
  net: nn.Module
  schedule: schedules.Schedule
  image_shape: tuple[int, int, int]
  num_classes: int | None  # set when conditional
  target: str = "eps"
  label_dropout: float = 0.1
  loss_buckets: int = 10
  eval_timesteps: int = 1000
  eval_variance: str = "beta"
  sampling: SamplerConfig = SamplerConfig()
  parts: tuple[str, ...] = ("model",)

  @property
  def timesteps(self) -> int:
    return int(self.schedule.betas.shape[0])

  @property
  def null_label(self) -> int | None:
    return self.num_classes

  # ---- the denoiser --------------------------------------------------------------------------
  def _denoiser(
    self, params: Any, labels: jax.Array | None, rng: jax.Array | None = None, train: bool = False
  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def denoise(x_t: jax.Array, t: jax.Array) -> jax.Array:
      rngs = {"dropout": rng} if train else {}
      return self.net.apply({"params": params}, x_t, t, labels, train=train, rngs=rngs)

    return denoise

  def _labels(self, batch: Batch) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.num_classes is not None else None

  # ---- the Task protocol -------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = jnp.zeros(batch["image"].shape, jnp.float32)
    t = jnp.zeros((x.shape[0],), jnp.int32)
    params_key, dropout_key = jax.random.split(rng)
    variables = self.net.init(
      {"params": params_key, "dropout": dropout_key}, x, t, self._labels(batch), train=False
    )
    return {"model": variables}

  def loss(
    self,
    part: str,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    train: bool,
    step: jax.Array | None = None,
  ) -> tuple[jax.Array, Metrics, Variables]:
    labels = self._labels(batch)
    drop_key, rng = jax.random.split(rng)
    if labels is not None:  # classifier-free guidance: train the unconditional model too
      drop = jax.random.bernoulli(drop_key, self.label_dropout, labels.shape)
      labels = jnp.where(drop, self.null_label, labels)
    per_example, t = self.simple_loss(
      variables["model"]["params"], to_model_space(batch["image"]), labels, rng, train
    )
    metrics = {"mse": jnp.mean(per_example), **self._bucketed(per_example, t)}
    return jnp.mean(per_example), metrics, {}

  def simple_loss(
    self, params: Any, x0: jax.Array, labels: jax.Array | None, rng: jax.Array, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    """L_simple per example [B] (Ho et al. eq. 14) at t ~ U{0..T-1}, and the t drawn [B]."""
    t_key, noise_key, dropout_key = jax.random.split(rng, 3)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, self.timesteps)  # Algorithm 1, line 3
    noise = jax.random.normal(noise_key, x0.shape)
    x_t = schedules.q_sample(self.schedule, x0, t, noise)
    out = self._denoiser(params, labels, dropout_key, train)(x_t, t)
    target = schedules.training_target(self.schedule, x0, t, noise, self.target)
    return jnp.mean(jnp.square(out - target), axis=(1, 2, 3)), t

  def _bucketed(self, per_example: jax.Array, t: jax.Array) -> Metrics:
    """Loss by timestep range, ``mse_t/0000-0099`` ...; NaN where the batch has no such t."""
    n = self.loss_buckets
    if n <= 0:
      return {}
    width = math.ceil(self.timesteps / n)
    bucket = t // width
    out = {}
    for k in range(n):
      mask = (bucket == k).astype(jnp.float32)
      count = jnp.sum(mask)
      value = jnp.sum(per_example * mask) / jnp.maximum(count, 1.0)
      name = f"mse_t/{k * width:04d}-{min((k + 1) * width, self.timesteps) - 1:04d}"
      out[name] = jnp.where(count > 0, value, jnp.nan)
    return out

  def sample(
    self, variables: Variables, rng: jax.Array, num: int, labels: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    cfg = self.sampling
    params = variables["model"]["params"]
    label_key, sample_key = jax.random.split(rng)
    out: dict[str, jax.Array] = {}
    if self.num_classes is not None:
      if labels is None:  # a grid that cycles through the classes
        labels = jnp.arange(num, dtype=jnp.int32) % self.num_classes
      out["labels"] = labels
      cond = self._denoiser(params, labels)
      uncond = self._denoiser(params, jnp.full((num,), self.null_label, jnp.int32))
      denoise = samplers.guided(cond, uncond, cfg.guidance_scale)
    else:
      del label_key
      denoise = self._denoiser(params, None)
    shape = (num, *self.image_shape)
    if cfg.sampler == "ddpm":
      x0 = samplers.ddpm_sample(
        sample_key, self.schedule, denoise, shape, self.target, cfg.variance, cfg.clip_x0
      )
    else:
      x0 = samplers.ddim_sample(
        sample_key, self.schedule, denoise, shape, self.target, cfg.steps, cfg.eta, cfg.clip_x0
      )
    out["images"] = to_uint8(x0)
    return out

  def _batch_sums(self, params: Any, batch: Batch, key: jax.Array) -> Metrics:
    """Masked sums over one eval batch of the bound's terms (bits/dim) and of L_simple."""
    x0 = to_model_space(batch["image"])
    labels = self._labels(batch)
    denoise = self._denoiser(params, labels)
    bound = likelihood.bound_bpd(
      key, self.schedule, denoise, x0, self.target, self.eval_variance, self.eval_timesteps
    )
    mse, _ = self.simple_loss(params, x0, labels, jax.random.fold_in(key, 1), train=False)
    bound["l_simple"] = mse
    return averages.masked_sums(bound, batch["mask"])

  @functools.cached_property
  def _eval_sums(self):
    return jax.jit(self._batch_sums)  # compiled once per task, not once per evaluation

  def evaluate(
    self, variables: Variables, batches: Iterator[Batch], rng: jax.Array
  ) -> dict[str, float]:
    """The variational bound in bits/dim (Ho et al. eq. 5) and L_simple on the held-out split."""
    params = variables["model"]["params"]
    sums = lambda b, i: self._eval_sums(params, b, jax.random.fold_in(rng, i))  # noqa: E731
    means, n = averages.split_means(sums, batches)
    return {
      **means,
      "bound_terms_evaluated": min(self.eval_timesteps, self.timesteps),
      "num_examples": n,
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return {}


def to_model_space(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (Ho et al. section 3.3)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


@TASKS.register("diffusion")
def make_diffusion_task(config: Any, info: data.DatasetInfo) -> DiffusionTask:
  tc = config.task
  if tc.target not in TARGETS:
    raise UserError(f"unknown target {tc.target!r} in config.task.target; use eps or v")
  num_classes = None
  if tc.conditional:
    if not info.num_classes:
      raise UserError(
        f"config.task.conditional=True but dataset {config.data.name!r} has no labels; "
        "set config.task.conditional=False"
      )
    num_classes = info.num_classes
  fields = {**config.model.to_dict(), "num_classes": num_classes}
  return DiffusionTask(
    net=build_module(fields),
    schedule=schedules.make_schedule(tc.schedule, tc.timesteps),
    image_shape=info.image_shape,
    num_classes=num_classes,
    target=tc.target,
    label_dropout=tc.label_dropout,
    loss_buckets=tc.loss_buckets,
    eval_timesteps=tc.eval_timesteps,
    eval_variance=tc.eval_variance,
    sampling=SamplerConfig.from_config(config.sample),
  )
