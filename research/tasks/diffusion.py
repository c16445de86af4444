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
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.diffusion import likelihood, samplers, schedules
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import pixels
from research.tasks.base import Batch, Metrics, ModelTask, Variables, masked_sums, means, options


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How `sample` draws images (``config.sample``; fields it leaves out keep these defaults)."""

  sampler: str = "ddim"  # ddim | ddpm (ancestral)
  steps: int = 50  # DDIM steps (ddpm always takes all T)
  eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 = ancestral with beta-tilde
  variance: str = "beta"  # ancestral variance: beta (sigma^2 = beta_t) | beta_tilde
  guidance_scale: float = 0.0  # w in (1 + w) eps(x, c) - w eps(x); 0 = the conditional model
  clip_x0: bool = True


@dataclasses.dataclass(frozen=True)
class DiffusionTask(ModelTask):
  net: nn.Module
  schedule: schedules.Schedule  # from config.task.schedule (linear | cosine) and .timesteps
  image_shape: tuple[int, int, int]
  num_classes: int | None  # set when config.task.conditional
  target: str = "eps"  # eps | v
  label_dropout: float = 0.1  # probability of the null label in training (conditional only)
  loss_buckets: int = 10  # per-timestep loss logged in this many equal ranges of t
  eval_timesteps: int = 1000  # terms of the bound evaluated per image (stratified; T = exact)
  eval_variance: str = "beta"  # reverse-process variance in the bound: beta | beta_tilde
  sampling: SamplerConfig = SamplerConfig()

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
    step: jax.Array,
  ) -> tuple[jax.Array, Metrics, Variables]:
    labels = self._labels(batch)
    drop_key, rng = jax.random.split(rng)
    if labels is not None:  # classifier-free guidance: train the unconditional model too
      drop = jax.random.bernoulli(drop_key, self.label_dropout, labels.shape)
      labels = jnp.where(drop, self.null_label, labels)
    per_example, t = self.simple_loss(
      variables["model"]["params"], pixels.to_signed(batch["image"]), labels, rng, train
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
    out["images"] = pixels.from_signed(x0)
    return out

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums over one eval batch of the bound's terms (bits/dim) and of L_simple."""
    params = variables["model"]["params"]
    x0 = pixels.to_signed(batch["image"])
    labels = self._labels(batch)
    denoise = self._denoiser(params, labels)
    bound = likelihood.bound_bpd(
      rng, self.schedule, denoise, x0, self.target, self.eval_variance, self.eval_timesteps
    )
    mse, _ = self.simple_loss(params, x0, labels, jax.random.fold_in(rng, 1), train=False)
    bound["l_simple"] = mse
    return masked_sums(bound, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    """The variational bound in bits/dim (Ho et al. eq. 5) and L_simple on the held-out split."""
    return {**means(totals), "bound_terms_evaluated": min(self.eval_timesteps, self.timesteps)}


@TASKS.register("diffusion")
def make_diffusion_task(config: Any, info: data.DatasetInfo) -> DiffusionTask:
  tc = config.task
  computed = ("net", "schedule", "image_shape", "num_classes", "sampling")
  opts = options(DiffusionTask, tc, computed=(*computed, "timesteps", "conditional"))
  if opts.get("target", DiffusionTask.target) not in schedules.TARGETS:
    raise UserError(f"unknown target {opts['target']!r} in config.task.target; use eps or v")
  num_classes = None
  if tc.get("conditional", False):
    if not info.num_classes:
      raise UserError(
        f"config.task.conditional=True but dataset {config.data.name!r} has no labels; "
        "set config.task.conditional=False"
      )
    num_classes = info.num_classes
  sampling = SamplerConfig(**options(SamplerConfig, config.sample, strict=False))
  if sampling.sampler not in ("ddim", "ddpm"):
    raise UserError(
      f"unknown sampler {sampling.sampler!r} in config.sample.sampler; use ddim or ddpm"
    )
  fields = {**config.model.to_dict(), "num_classes": num_classes}
  return DiffusionTask(
    net=build_module(fields),
    schedule=schedules.make_schedule(tc.get("schedule", "linear"), tc.get("timesteps", 1000)),
    image_shape=info.image_shape,
    num_classes=num_classes,
    sampling=sampling,
    **opts,
  )
