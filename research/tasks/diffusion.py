"""Diffusion and flow models as one task for the shared trainer: any denoiser under any objective.

``config.task.objective`` chooses the training objective (`research.diffusion.objectives`, time
convention there: data at t = 0, noise at t_max):

- ``ddpm`` (default): DDPM's L_simple (Ho et al. 2020, eq. 14), epsilon (the paper) or
  v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022) at a uniform integer timestep; the
  schedule is ``task.schedule`` (linear | cosine) with ``task.timesteps``, the target ``task.target``;
- ``flow``: flow matching on the linear path x_t = (1 - t) x0 + t eps, velocity target (Lipman et al.
  2022; Liu et al. 2022), uniform or SD3's logit-normal t (``time_sampling``, ``loc``, ``scale``),
  optional timestep ``shift`` (Esser et al. 2024);
- ``edm``: EDM's preconditioned denoiser (Karras et al. 2022): log-normal sigma (``p_mean``,
  ``p_std``), ``sigma_data``, unit effective weight;
- ``meanflow``: MeanFlow's average velocity (Geng et al. 2025), for one- and few-step sampling
  (the network takes two times: ``config.model.num_times = 2``).

The objective's own options are keys of ``config.task`` beside the task's. Images are scaled to
[-1, 1]. With ``conditional``, labels are replaced by the null label with probability
``label_dropout`` so that one network learns both the conditional and the unconditional model
(classifier-free guidance, Ho & Salimans 2022). Sampling: `research.tasks.diffusion_sampling`.

Held-out metrics: the objective's loss on the split and, per objective, its likelihood: DDPM's
variational bound in bits/dim (Ho et al. eq. 5); for flow and MeanFlow models, bits/dim through the
probability-flow ODE with Hutchinson's trace estimator (``likelihood_steps`` Heun steps, 0 = off;
`research.diffusion.flow_likelihood`). EDM reports its loss only.

The denoiser is any registered network ``net(x [B,H,W,C], t [B] or [B, K], label [B] | None, *,
train) -> [B,H,W,C]``; the task does not know which (the DDPM UNet, the diffusion transformer).

Latent diffusion (Rombach et al. 2022): with ``task.autoencoder`` (the workdir of a trained
`research.tasks.autoencoder` run, loaded through the one loader), the model diffuses
``latent_scale`` x the frozen encoder's posterior means instead of pixels, and samples are decoded
to uint8 pixels, so the samples contract and every evaluator hold unchanged. The first stage's
parameters are a ``first_stage`` collection of the model part: they are checkpointed with the run
(self-contained, as DALL-E's frozen dVAE) and never trained. ``latent_scale`` 0 (default) is
LDM's ``scale_factor``: 1 / the std of the posterior means, here over the first 512 held-out
images, computed once when the task is built. Held-out metrics in latent space: the loss only
(bits/dim would be of latents, not of pixels).
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
from research.diffusion import flow_likelihood, likelihood, samplers, schedules
from research.diffusion import objectives as obj
from research.diffusion.meanflow import MeanFlowObjective
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import diffusion_sampling, pixels
from research.tasks.base import Batch, Metrics, ModelTask, Variables, masked_sums, means, options
from research.tasks.diffusion_sampling import SamplerConfig
from research.train.restore import load_trained

FIRST_STAGE = "first_stage"  # the model part's collection of the frozen autoencoder's parameters
LATENT_SCALE_IMAGES = 512  # held-out images whose latents give latent_scale = 0's std

OBJECTIVES = {
  "ddpm": obj.DDPMObjective,
  "flow": obj.FlowObjective,
  "edm": obj.EDMObjective,
  "meanflow": MeanFlowObjective,
}


@dataclasses.dataclass(frozen=True)
class DiffusionTask(ModelTask):
  net: nn.Module
  objective: Any  # one of OBJECTIVES, built from config.task
  image_shape: tuple[int, int, int]
  num_classes: int | None  # set when config.task.conditional
  label_dropout: float = 0.1  # probability of the null label in training (conditional only)
  loss_buckets: int = 10  # loss logged in this many equal ranges of the noise level
  eval_timesteps: int = 1000  # DDPM: terms of the bound per image (stratified; T = exact)
  eval_variance: str = "beta"  # DDPM: reverse-process variance in the bound: beta | beta_tilde
  likelihood_steps: int = 32  # flow / MeanFlow: Heun steps of the PF-ODE for bits/dim; 0 = off
  sampling: SamplerConfig = SamplerConfig()
  guide: Any = None  # (task, host variables) of the autoguidance guide, or None
  # Latent diffusion: (the autoencoder task, its host {"model": {"params"}}) and the latent scale.
  first_stage: Any = None
  latent_scale: float = 1.0

  # ---- DDPM's names, kept for its samplers and bound ----------------------------------------------
  @property
  def schedule(self) -> schedules.Schedule:
    return self.objective.schedule

  @property
  def target(self) -> str:
    return self.objective.prediction

  @property
  def timesteps(self) -> int:
    return int(self.schedule.betas.shape[0])

  @property
  def null_label(self) -> int | None:
    return self.num_classes

  # ---- the denoiser --------------------------------------------------------------------------
  def _net_fn(
    self, params: Any, labels: jax.Array | None, rng: jax.Array | None = None, train: bool = False
  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(x_in, c_noise) -> the network's output, closing over params, labels and dropout."""

    def net_fn(x_in: jax.Array, c_noise: jax.Array) -> jax.Array:
      rngs = {"dropout": rng} if train else {}
      return self.net.apply({"params": params}, x_in, c_noise, labels, train=train, rngs=rngs)

    return net_fn

  def _denoiser(self, params: Any, labels: jax.Array | None) -> Callable[..., jax.Array]:
    """DDPM's denoise_fn(x_t, t) (integer t), for its samplers and bound."""
    net_fn = self._net_fn(params, labels)
    return lambda x_t, t: net_fn(*self.objective.net_inputs(x_t, t))

  def _labels(self, batch: Batch) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.num_classes is not None else None

  # ---- pixels or latents -----------------------------------------------------------------------
  def data_x0(self, variables: Variables, batch: Batch) -> jax.Array:
    """What the model diffuses: images in [-1, 1], or the scaled latents of the frozen encoder."""
    if self.first_stage is None:
      return pixels.to_signed(batch["image"])
    frozen = {"model": {"params": variables["model"][FIRST_STAGE]}}
    z = self.first_stage[0].encode(frozen, batch["image"])  # [B, h, w, c]
    return jax.lax.stop_gradient(z) * self.latent_scale

  def to_images(self, variables: Variables, x0: jax.Array) -> jax.Array:
    """Samples of the model's space -> uint8 images [B, H, W, C] (decoded when latent)."""
    if self.first_stage is None:
      return pixels.from_signed(x0)
    frozen = {"model": {"params": variables["model"][FIRST_STAGE]}}
    return self.first_stage[0].decode(frozen, x0 / self.latent_scale)

  # ---- the Task protocol -------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = jnp.zeros((batch["image"].shape[0], *self.image_shape), jnp.float32)
    t = jnp.full((x.shape[0],), self.objective.t_max, jnp.float32)
    x_in, c_noise = self.objective.net_inputs(x, t)
    params_key, dropout_key = jax.random.split(rng)
    args = (x_in, c_noise, self._labels(batch))
    out = jax.eval_shape(lambda: self.net.apply(self.net.init(rng, *args, train=False), *args,
                                                train=False))  # fmt: skip
    if tuple(out.shape) != tuple(x.shape):
      raise UserError(
        f"the network predicts {tuple(out.shape)} for images {tuple(x.shape)}; the objectives "
        "need a prediction of the image's shape (learned variance is not trained: set "
        "model.learn_sigma=False, and model.out_channels to the image's channels or leave it unset)"
      )
    variables = dict(self.net.init({"params": params_key, "dropout": dropout_key}, *args,
                                   train=False))  # fmt: skip
    if self.first_stage is not None:  # frozen: a collection, not parameters
      variables[FIRST_STAGE] = jax.tree.map(jnp.asarray, self.first_stage[1]["model"]["params"])
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
    per_example, t = self.objective_loss(
      variables["model"]["params"], self.data_x0(variables, batch), labels, rng, train
    )
    name = "mse" if isinstance(self.objective, obj.DDPMObjective) else "objective"
    metrics = {name: jnp.mean(per_example), **self._bucketed(per_example, t)}
    return jnp.mean(per_example), metrics, {}

  def objective_loss(
    self, params: Any, x0: jax.Array, labels: jax.Array | None, rng: jax.Array, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    """The objective's per-example loss [B] and the noise level drawn [B].

    The objective splits rng into (time, noise, the caller's) keys; the third is the dropout key,
    so for DDPM these are exactly the draws of Algorithm 1 (t ~ U{0..T-1}, eps ~ N(0, I)).
    """
    net_fn = self._net_fn(params, labels, obj.caller_key(rng), train)
    per_example, aux = self.objective.loss(net_fn, x0, rng)
    return per_example, aux["t"]

  def _bucketed(self, per_example: jax.Array, t: jax.Array) -> Metrics:
    """Loss by noise level: DDPM ``mse_t/0000-0099`` ... (integer t); continuous objectives
    ``loss_t/0.0-0.1`` ... over the fraction of t_max (EDM: of log sigma between sigma_min and
    sigma_max). NaN where the batch has no such level."""
    n = self.loss_buckets
    if n <= 0:
      return {}
    if isinstance(self.objective, obj.DDPMObjective):
      width = math.ceil(self.timesteps / n)
      bucket = t // width
      names = [
        f"mse_t/{k * width:04d}-{min((k + 1) * width, self.timesteps) - 1:04d}" for k in range(n)
      ]
    else:
      if isinstance(self.objective, obj.EDMObjective):
        lo, hi = math.log(self.objective.sigma_min), math.log(self.objective.sigma_max)
        frac = (jnp.log(jnp.maximum(t, 1e-12)) - lo) / (hi - lo)
      else:
        frac = t / self.objective.t_max
      bucket = jnp.clip(jnp.floor(frac * n), 0, n - 1).astype(jnp.int32)
      names = [f"loss_t/{k / n:.1f}-{(k + 1) / n:.1f}" for k in range(n)]
    out = {}
    for k, name in enumerate(names):
      mask = (bucket == k).astype(jnp.float32)
      count = jnp.sum(mask)
      value = jnp.sum(per_example * mask) / jnp.maximum(count, 1.0)
      out[name] = jnp.where(count > 0, value, jnp.nan)
    return out

  def model_fn(self, params: Any, labels: jax.Array | None) -> Callable[..., jax.Array]:
    """The sampling network (x_in, c_noise) -> output: classifier-free guided when
    ``guidance_scale`` != 0, then autoguided by the guide when ``autoguidance`` != 0, each only
    at noise levels inside ``guidance_interval`` (EDM's sigma, Kynkäänniemi et al. 2024)."""
    main = self._net_fn(params, labels)
    guides = []  # (the other network, its weight w): out -> (1 + w) out - w other
    if labels is not None and self.sampling.guidance_scale != 0:  # w = 0: one pass, not two
      null = jnp.full(labels.shape, self.null_label, jnp.int32)
      guides.append((self._net_fn(params, null), self.sampling.guidance_scale))
    if self.guide is not None and self.sampling.autoguidance != 0:
      guide_task, guide_variables = self.guide
      weak = guide_task._net_fn(guide_variables["model"]["params"], labels)
      guides.append((weak, self.sampling.autoguidance))
    if not guides:
      return main
    lo, hi = self.sampling.guidance_interval
    everywhere = lo <= 0 and hi == float("inf")

    def guided(x_in: jax.Array, c_noise: jax.Array) -> jax.Array:
      out = main(x_in, c_noise)
      if not everywhere:
        sigma = self.objective.noise_to_signal(c_noise)  # [B]
        inside = obj.bcast((sigma >= lo) & (sigma <= hi), out)
      for other, w in guides:
        w = w if everywhere else jnp.where(inside, w, 0.0)
        out = samplers.cfg_combine(out, other(x_in, c_noise), w)
      return out

    return guided

  def sample(
    self, variables: Variables, rng: jax.Array, num: int, labels: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    label_key, sample_key = jax.random.split(rng)
    out: dict[str, jax.Array] = {}
    if self.num_classes is not None:
      if labels is None:  # a grid that cycles through the classes
        labels = jnp.arange(num, dtype=jnp.int32) % self.num_classes
      out["labels"] = labels
    else:
      del label_key
    model_fn = self.model_fn(variables["model"]["params"], labels)
    x0, _ = diffusion_sampling.draw(
      self.sampling, self.objective, model_fn, sample_key, (num, *self.image_shape)
    )
    out["images"] = self.to_images(variables, x0)
    return out

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums over one eval batch: the objective's loss and the model's likelihood terms."""
    params = variables["model"]["params"]
    x0 = self.data_x0(variables, batch)
    labels = self._labels(batch)
    per_example, _ = self.objective_loss(params, x0, labels, jax.random.fold_in(rng, 1), False)
    if self.first_stage is not None:
      terms = {"loss": per_example}
    elif isinstance(self.objective, obj.DDPMObjective):
      terms = likelihood.bound_bpd(
        rng, self.schedule, self._denoiser(params, labels), x0, self.target,
        self.eval_variance, self.eval_timesteps,
      )  # fmt: skip
      terms["l_simple"] = per_example
    else:
      terms = {"loss": per_example}
      if self.likelihood_steps and not isinstance(self.objective, obj.EDMObjective):
        bpd, _ = flow_likelihood.bits_per_dim(
          jax.random.fold_in(rng, 2), self.objective, self._net_fn(params, labels),
          batch["image"], self.likelihood_steps, method="heun",
        )  # fmt: skip
        terms["ode_bpd"] = bpd
    return masked_sums(terms, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    out = means(totals)
    if isinstance(self.objective, obj.DDPMObjective):
      out["bound_terms_evaluated"] = min(self.eval_timesteps, self.timesteps)
    elif "ode_bpd" in out:
      out["ode_bpd_steps"] = self.likelihood_steps
    return out


def make_objective(tc: Any) -> tuple[Any, tuple[str, ...]]:
  """The objective of ``config.task`` and the task keys it consumed."""
  name = tc.get("objective", "ddpm")
  if name not in OBJECTIVES:
    raise UserError(f"unknown config.task.objective {name!r}; use one of {sorted(OBJECTIVES)}")
  if name == "ddpm":
    target = tc.get("target", "eps")
    if target not in schedules.TARGETS:
      raise UserError(f"unknown target {target!r} in config.task.target; use eps or v")
    schedule = schedules.make_schedule(tc.get("schedule", "linear"), tc.get("timesteps", 1000))
    return obj.DDPMObjective(schedule, target), ("objective", "schedule", "timesteps", "target")
  cls = OBJECTIVES[name]
  keys = tuple(f.name for f in dataclasses.fields(cls))
  section = {k: v for k, v in tc.items() if k in keys}
  return cls(**options(cls, section)), ("objective", *keys)


@TASKS.register("diffusion")
def make_diffusion_task(config: Any, info: data.DatasetInfo) -> DiffusionTask:
  tc = config.task
  objective, consumed = make_objective(tc)
  computed = ("net", "objective", "image_shape", "num_classes", "sampling", "guide", "first_stage")
  opts = options(
    DiffusionTask, tc, computed=(*computed, *consumed, "conditional", "autoencoder", "latent_scale")
  )
  num_classes = None
  if tc.get("conditional", False):
    if not info.num_classes:
      raise UserError(
        f"config.task.conditional=True but dataset {config.data.name!r} has no labels; "
        "set config.task.conditional=False"
      )
    num_classes = info.num_classes
  sampling = SamplerConfig(**options(SamplerConfig, config.sample, strict=False))
  diffusion_sampling.check(sampling, objective)
  fields = {**config.model.to_dict(), "num_classes": num_classes}
  first_stage, latent_scale, shape = None, 1.0, tuple(info.image_shape)
  if "autoencoder" in tc and not tc.autoencoder:  # a latent config without its first stage
    raise UserError(
      "config.task.autoencoder is empty: this latent diffusion config needs a trained first stage "
      "(add autoencoder=<workdir> to the config argument; train one with "
      "experiments/autoencoder_mnist.py:runlocal)"
    )
  if tc.get("autoencoder", ""):
    first_stage, latent_scale, shape = load_first_stage(config, info)
  return DiffusionTask(
    net=build_module(fields),
    objective=objective,
    image_shape=shape,
    num_classes=num_classes,
    sampling=sampling,
    guide=diffusion_sampling.load_guide(sampling, objective, num_classes, shape),
    first_stage=first_stage,
    latent_scale=latent_scale,
    **opts,
  )


def load_first_stage(config: Any, info: data.DatasetInfo) -> tuple[Any, float, tuple[int, ...]]:
  """(the frozen autoencoder task and its host params, the latent scale, the latent shape)."""
  trained = load_trained(config.task.autoencoder, task_name="autoencoder")
  if tuple(trained.info.image_shape) != tuple(info.image_shape):
    raise UserError(
      f"the autoencoder in {config.task.autoencoder} takes images {trained.info.image_shape}, "
      f"this data has {tuple(info.image_shape)}; train one on {config.data.name}"
    )
  ae = trained.task
  host = {"model": {"params": jax.device_get(trained.variables["model"]["params"])}}
  scale = float(config.task.get("latent_scale", 0.0) or 0.0)
  if scale <= 0:  # LDM's scale_factor: 1 / std of the latents (its code's scale_by_std)
    images = data.held_out_examples(config.data, LATENT_SCALE_IMAGES)["image"]
    z = np.asarray(jax.jit(ae.encode)(host, images), np.float64)
    scale = 1.0 / float(z.std())
  return (ae, host), scale, tuple(ae.latent_shape)
