"""How the diffusion task draws images: one sampler config, every sampler of `research.diffusion`.

``config.sample.sampler`` picks the method; each objective takes the samplers its math supports:

  ddpm objective       ddim (Song et al. 2021; spacing uniform | linspace | quadratic | leading |
                       trailing, steps_offset), ddpm (ancestral, Ho et al. Algorithm 2)
  flow / edm           euler, heun (Heun's 2nd order, Euler on the last step to 0: 2N - 1
                       evaluations), euler_maruyama (the reverse SDE with the same marginals, SiT)
  edm                  edm (EDM's stochastic sampler, Algorithm 2: s_churn, s_tmin, s_tmax, s_noise)
  meanflow             meanflow (one or a few average-velocity steps), and the flow samplers

Guidance (``guidance_scale`` w) combines the conditional and the unconditional output as
(1 + w) cond - w uncond (Ho & Salimans 2022, eq. 6): w = 0 is the conditional model; DiT's, SiT's
and diffusers' scale s is 1 + w. The combination is applied to the raw network output, which for
every objective here is the same as guiding eps, x0, v or D (they are affine in the output at fixed
x_t and t, with weights that sum to one).

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", eq. 2:
D_w = D_0 + w (D_1 - D_0), the main model D_1 and a weaker guide D_0 of the same task) works for
unconditional models too: ``autoguidance`` w_a combines the main output as (1 + w_a) main - w_a
guide (their w is 1 + w_a, the convention of ``guidance_scale``). The guide is another trained
run, ``guide_workdir`` (its newest checkpoint, or ``guide_step``), loaded through
`research.train.restore.load_trained`: a smaller or shorter-trained model, as in the paper, or an
earlier checkpoint of the same run. It must share the main model's objective and conditioning;
with classifier-free guidance too, the guide takes the labels and guides the CFG-combined output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import objectives as obj
from research.diffusion import ode_samplers, samplers, schedules
from research.diffusion.meanflow import MeanFlowObjective
from research.errors import UserError
from research.train.restore import load_trained

# The samplers each kind of objective can run (see the module docstring).
SAMPLERS = {
  obj.DDPMObjective: ("ddim", "ddpm"),
  obj.FlowObjective: ("euler", "heun", "euler_maruyama"),
  obj.EDMObjective: ("euler", "heun", "euler_maruyama", "edm"),
  MeanFlowObjective: ("meanflow", "euler", "heun", "euler_maruyama"),
}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How `sample` draws images (``config.sample``; fields it leaves out keep these defaults)."""

  sampler: str = "ddim"  # see SAMPLERS
  steps: int = 50  # sampling steps (the ancestral ddpm sampler always takes all T)
  guidance_scale: float = 0.0  # w in (1 + w) out(x, c) - w out(x); 0 = the conditional model
  # DDPM objective
  eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 = ancestral with beta-tilde
  variance: str = "beta"  # ancestral variance: beta (sigma^2 = beta_t) | beta_tilde
  clip_x0: bool = True  # clip each x0 prediction to [-1, 1] (the official DDPM code)
  spacing: str = "uniform"  # DDIM timesteps: uniform | linspace | quadratic | leading | trailing
  steps_offset: int = 0  # diffusers' steps_offset (with leading spacing)
  # continuous objectives
  shift: float = 0.0  # flow grid's SD3 timestep shift; 0 = the objective's own
  rho: float = 0.0  # EDM grid's rho; 0 = the objective's (7)
  s_churn: float = 0.0  # EDM stochastic sampler (Table 5: CIFAR-10 VP 30, 0.01, 1, 1.007)
  s_tmin: float = 0.0
  s_tmax: float = float("inf")
  s_noise: float = 1.0
  diffusion_form: str = "sigma"  # euler_maruyama's D_t: sigma (SiT's default) | constant
  diffusion_norm: float = 1.0
  # autoguidance (Karras et al. 2024)
  autoguidance: float = 0.0  # w_a in (1 + w_a) out - w_a guide; 0 = off
  guide_workdir: str = ""  # the guide's run (a weaker model of the same task)
  guide_step: int = 0  # the guide's checkpoint; 0 = its newest
  # Both guidances act only where EDM's sigma (s(t) / a(t), any objective) of the step lies in
  # [low, high], the main model's output elsewhere (Kynkäänniemi et al. 2024; (0, inf): always).
  guidance_interval: tuple[float, float] = (0.0, float("inf"))

  def __post_init__(self) -> None:  # a config's list, as a tuple of floats
    object.__setattr__(self, "guidance_interval", tuple(map(float, self.guidance_interval)))


def check(cfg: SamplerConfig, objective: Any) -> None:
  """A one-line error when the objective cannot run the configured sampler."""
  allowed = SAMPLERS[type(objective)]
  if cfg.sampler not in allowed:
    raise UserError(
      f"config.sample.sampler={cfg.sampler!r} does not sample the {type(objective).__name__}; "
      f"use one of {list(allowed)}"
    )
  if cfg.steps < 1:
    raise UserError(f"config.sample.steps={cfg.steps} must be at least 1")
  interval = tuple(cfg.guidance_interval)
  if len(interval) != 2 or not 0 <= interval[0] < interval[1]:
    raise UserError(
      f"config.sample.guidance_interval={interval} must be (low, high) sigmas with "
      "0 <= low < high, e.g. (0.28, 5.42) or (0, inf) for guidance at every step"
    )
  if cfg.sampler in ("ddim", "ddpm"):
    if cfg.spacing not in schedules.SPACINGS:
      raise UserError(f"config.sample.spacing={cfg.spacing!r}; use one of {schedules.SPACINGS}")
    schedules.check_variance(cfg.variance)


def evaluations(cfg: SamplerConfig, objective: Any, guided: bool) -> int:
  """Network evaluations per image of one sample: the sampler's steps (Heun and EDM: 2N - 1 on
  a grid ending at 0), twice over with guidance (a conditional and an unconditional pass), one
  more per step with autoguidance (the guide's pass)."""
  if cfg.sampler == "ddpm":
    n = objective.schedule.num_steps
  elif cfg.sampler == "ddim":
    n = len(schedules.timestep_subsequence(objective.schedule.num_steps, cfg.steps, cfg.spacing))
  elif cfg.sampler in ("heun", "edm"):
    g = grid(cfg, objective)
    n = cfg.steps + int(np.sum(g[1:] > 0))
  else:
    n = cfg.steps
  return n * ((2 if guided else 1) + (1 if cfg.autoguidance else 0))


# Objective fields that only shape training or the time grid (the main model's grid is used):
# a guide may differ in them. All other fields fix how the network's output is read.
_TRAINING_FIELDS = frozenset(
  ("time_sampling", "loc", "scale", "shift", "p_mean", "p_std", "sigma_min", "sigma_max", "rho",
   "r_equals_t", "norm_p", "norm_eps")
)  # fmt: skip


def _differing_field(a: Any, b: Any) -> str | None:
  """The first field that reads the two objectives' outputs differently, or None."""
  if type(a) is not type(b):
    return "objective"
  for f in dataclasses.fields(a):
    if f.name in _TRAINING_FIELDS:
      continue
    x, y = getattr(a, f.name), getattr(b, f.name)
    if dataclasses.is_dataclass(x):  # DDPM's schedule: its arrays
      same = all(
        np.array_equal(np.asarray(getattr(x, g.name)), np.asarray(getattr(y, g.name)))
        for g in dataclasses.fields(x)
      )
    else:
      same = x == y
    if not same:
      return f.name
  return None


def load_guide(
  cfg: SamplerConfig,
  objective: Any,
  num_classes: int | None,
  image_shape: tuple[int, ...],
) -> tuple[Any, Any] | None:
  """(the guide's task, its host variables) for autoguidance, or None when it is off; a guide
  that cannot guide this model is a one-line error."""
  if not cfg.autoguidance:
    return None
  if not cfg.guide_workdir:
    raise UserError(
      f"config.sample.autoguidance={cfg.autoguidance} needs a guide: set "
      "config.sample.guide_workdir to a weaker run of the same task (and guide_step)"
    )
  guide = load_trained(cfg.guide_workdir, task_name="diffusion", step=cfg.guide_step)
  where = f"the guide {cfg.guide_workdir} (step {guide.step})"
  field = _differing_field(objective, guide.task.objective)
  if field is not None:
    show = (lambda o: type(o).__name__) if field == "objective" else (lambda o: getattr(o, field))
    raise UserError(
      f"{where} reads its output differently ({field}: {show(guide.task.objective)} vs "
      f"{show(objective)}); train the guide with this model's objective"
    )
  if guide.task.num_classes != num_classes or tuple(guide.task.image_shape) != tuple(image_shape):
    raise UserError(
      f"{where} is for images {tuple(guide.task.image_shape)} with classes "
      f"{guide.task.num_classes}, this model for {tuple(image_shape)} with {num_classes}; "
      "train the guide on the same data and conditioning"
    )
  return guide.task, jax.device_get(guide.variables)


def grid(cfg: SamplerConfig, objective: Any) -> np.ndarray:
  """The time grid from noise to data (float64 [steps + 1]) of a continuous objective."""
  if isinstance(objective, obj.FlowObjective) and cfg.shift:
    return objective.time_grid(cfg.steps, shift=cfg.shift)
  if isinstance(objective, obj.EDMObjective) and cfg.rho:
    return objective.time_grid(cfg.steps, rho=cfg.rho)
  return objective.time_grid(cfg.steps)


def draw(
  cfg: SamplerConfig,
  objective: Any,
  model_fn: Callable[[jax.Array, jax.Array], jax.Array],
  rng: jax.Array,
  shape: tuple[int, ...],
) -> tuple[jax.Array, jax.Array]:
  """(x0 float32 [*shape] in the model's [-1, 1] space, network evaluations per image)."""
  if isinstance(objective, obj.DDPMObjective):
    denoise = lambda x, t: model_fn(*objective.net_inputs(x, t))
    target, schedule = objective.prediction, objective.schedule
    if cfg.sampler == "ddpm":  # ancestral sampling takes all T steps
      x0 = samplers.ddpm_sample(rng, schedule, denoise, shape, target, cfg.variance, cfg.clip_x0)
      return x0, jnp.int32(schedule.num_steps)
    x0 = samplers.ddim_sample(
      rng, schedule, denoise, shape, target, cfg.steps, cfg.eta, cfg.clip_x0,
      spacing=cfg.spacing, steps_offset=cfg.steps_offset,
    )  # fmt: skip
    steps = schedules.timestep_subsequence(
      schedule.num_steps, cfg.steps, cfg.spacing, cfg.steps_offset
    )
    return x0, jnp.int32(len(steps))
  if cfg.sampler == "meanflow":
    return ode_samplers.meanflow_sample(rng, objective, model_fn, shape, cfg.steps)
  g = grid(cfg, objective)
  if cfg.sampler == "edm":
    return ode_samplers.edm_sample(
      rng, objective, model_fn, g, shape, cfg.s_churn, cfg.s_tmin, cfg.s_tmax, cfg.s_noise
    )
  if cfg.sampler == "euler_maruyama":
    return ode_samplers.euler_maruyama_sample(
      rng, objective, model_fn, g, shape, cfg.diffusion_form, cfg.diffusion_norm
    )
  return ode_samplers.SAMPLERS[cfg.sampler](rng, objective, model_fn, g, shape)
