"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): one- and few-step generation trained from scratch.

Same path and time convention as `objectives.FlowObjective`: z_t = (1 - t) x + t e, data at t = 0,
instantaneous velocity v = e - x. The network predicts the AVERAGE velocity over [r, t] (r <= t),
  u(z_t, r, t) = 1/(t - r) int_r^t v(z_tau, tau) dtau          (the definition of MeanFlow sec. 3),
so one step from t to r is exact: z_r = z_t - (t - r) u(z_t, r, t). Differentiating
(t - r) u = int_r^t v in t gives the MeanFlow identity
  u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v . grad_z u + d_t u,
the total derivative along the flow: ONE forward-mode product `jax.jvp(u_fn, (z, t, r), (v, 1, 0))`.
The loss regresses u_theta on sg(v - clip(t - r, 0, 1) du/dt) (MeanFlow's loss), with the conditional
velocity e - x standing in for v (as conditional flow matching does); at r = t it is exactly flow
matching. The gradient flows only through the jvp's primal output u, never through du/dt.

Recipe of the official JAX code (reference section 3.4): t and r from two logit-normal draws
(location -0.4, scale 1.0), t the larger, r the smaller; r = t on a fixed 75% of the rows (the first
floor(0.75 B)); the network takes (t, h = t - r) through two timestep embedders, summed (the UNet's
`num_times=2`); the per-example loss is the squared error SUMMED over pixels, L, divided by the
adaptive weight sg(L + c)^p with p = 1, c = 0.01 (the paper's adaptive loss weighting). Because
of c, the sum (not the mean) is the reduction that matches the repo's numbers. Training-time
guidance (the repo's omega, kappa blend of the target velocity) is not implemented here: class
dropout with the plain v target is its omega = 1, kappa = 0 case.

Why MeanFlow rather than consistency training or shortcut models (reference section 3.5): one jvp
per example and nothing else; no teacher (consistency distillation needs a pretrained model), no
EMA target network (consistency training and shortcut models build their targets with one), no
discretisation curriculum N(k) retraced during training (consistency training, iCT), no second
no-grad forward pass (iCT, and two for shortcut models), and it trains from scratch in the same
single jitted step as the other objectives through `loss(net_fn, x0, rng)`. The one requirement,
forward-mode differentiation of the network, is native in JAX (`jax.jvp`), and the DDPM UNet is
jvp-safe (its attention runs on XLA unless `attention="cudnn"` is chosen).

Network time inputs: c_noise = time_scale * [t, t - r] of shape [B, 2] (time_scale 1000 as
`FlowObjective`); `net_inputs(x_t, t)` without r means r = t (h = 0, the instantaneous velocity), so
the ODE samplers of `ode_samplers` can also run a MeanFlow network as an ordinary flow model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.diffusion import objectives as obj
from research.errors import UserError

UFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (z [B, ...], t [B], r [B]) -> u


def meanflow_target(
  u_fn: UFn, z: jax.Array, t: jax.Array, r: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(u_theta(z, r, t), sg(u_tgt)) with u_tgt = v - clip(t - r, 0, 1) du/dt (the MeanFlow target).

  du/dt = v . d_z u + d_t u is one jvp with tangents (v, 1, 0) for (z, t, r); t and r are [B].
  """
  tangents = (v.astype(z.dtype), jnp.ones_like(t), jnp.zeros_like(r))
  u, du_dt = jax.jvp(u_fn, (z, t, r), tangents)  # both [B, ...]
  u_tgt = v - obj.bcast(jnp.clip(t - r, 0.0, 1.0), z) * du_dt
  return u, jax.lax.stop_gradient(u_tgt)


def adaptive_weight(sq_sum: jax.Array, p: float = 1.0, c: float = 0.01) -> jax.Array:
  """w = 1 / sg(L + c)^p for the per-example summed loss L [B] (adaptive loss weighting)."""
  return 1.0 / jax.lax.stop_gradient(jnp.power(sq_sum + c, p))


@dataclasses.dataclass(frozen=True)
class MeanFlowObjective(obj._PathMixin):
  """The MeanFlow objective; the `objectives.Objective` methods act at r = t (see the module doc)."""

  p_mean: float = -0.4  # logit-normal location of t and r
  p_std: float = 1.0  # logit-normal scale
  r_equals_t: float = 0.75  # fraction of rows with r = t (plain flow matching rows)
  norm_p: float = 1.0  # adaptive weight power p
  norm_eps: float = 0.01  # adaptive weight constant c
  time_scale: float = 1000.0  # c_noise = time_scale * [t, t - r]

  @property
  def t_max(self) -> float:
    return 1.0

  def __post_init__(self) -> None:
    if not 0.0 <= self.r_equals_t <= 1.0:
      raise UserError(f"meanflow r_equals_t={self.r_equals_t} must lie in [0, 1], e.g. 0.75")
    if not (self.p_std > 0 and self.time_scale > 0 and self.norm_eps >= 0):
      raise UserError(
        "meanflow needs p_std > 0, time_scale > 0 and norm_eps >= 0: use the defaults 1, 1000, 0.01"
      )

  def sample_tr(self, rng: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """(t, r), each float32 [n], r <= t; r = t on the first floor(r_equals_t n) rows."""
    k1, k2 = jax.random.split(rng)
    a = obj.logit_normal(k1, n, self.p_mean, self.p_std)
    b = obj.logit_normal(k2, n, self.p_mean, self.p_std)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    same = jnp.arange(n) < int(self.r_equals_t * n)  # a fixed count, as the official code
    return t, jnp.where(same, t, r)

  def sample_time(self, rng: jax.Array, n: int) -> jax.Array:
    return self.sample_tr(rng, n)[0]

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    t = jnp.asarray(t, jnp.float32)
    return 1.0 - t, t

  def net_inputs(
    self, x_t: jax.Array, t: jax.Array, r: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(x_t, time_scale * [t, t - r] [B, 2]); r = None means r = t."""
    t = jnp.asarray(t, jnp.float32)
    h = jnp.zeros_like(t) if r is None else t - jnp.asarray(r, jnp.float32)
    return x_t, self.time_scale * jnp.stack([t, h], axis=-1)

  def time_of(self, c_noise: jax.Array) -> jax.Array:
    """t [B] of the network's [B, 2] time input (the step's end r is t - h)."""
    return jnp.asarray(c_noise, jnp.float32)[..., 0] / self.time_scale

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    return noise - x0  # the target at r = t; `loss` builds the r < t one with a jvp

  def loss_weight(self, t: jax.Array) -> jax.Array:
    return jnp.ones(jnp.shape(t), jnp.float32)  # the adaptive weight is applied inside `loss`

  def predictions(
    self, net_out: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """At r = t, u = v: x0 = x_t - t u, eps = x_t + (1 - t) u (as `FlowObjective`)."""
    tb = obj.bcast(jnp.asarray(t, jnp.float32), x_t)
    return x_t - tb * net_out, x_t + (1.0 - tb) * net_out

  def drift(self, net_out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    return net_out  # u(z, t, t) = v(z, t)

  def time_grid(self, num_steps: int) -> np.ndarray:
    """Uniform 1 -> 0 in float64 (MeanFlow's k-step sampling; num_steps = 1 is [1, 0])."""
    obj._check_steps(num_steps)
    return np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)

  def u_fn(self, net_fn: obj.NetFn) -> UFn:
    """u_fn(z, t, r) = net_fn(z, time_scale * [t, t - r]): the average velocity."""
    return lambda z, t, r: net_fn(*self.net_inputs(z, t, r))

  def loss(self, net_fn: obj.NetFn, x0: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
    """sum_pixels (u - sg(u_tgt))^2 / sg(L + c)^p [B], and {"t", "r", "sq_sum" [B]}.

    net_fn is applied inside `jax.jvp` once (the primal and the tangent in one pass, with the same
    dropout key). Keys as `objectives`: split(rng, 3) = [t and r, noise, the caller's].
    """
    tr_key, noise_key, _ = jax.random.split(rng, 3)
    t, r = self.sample_tr(tr_key, x0.shape[0])  # [B] each
    noise = jax.random.normal(noise_key, x0.shape)  # [B, ...]
    z = self.corrupt(x0, t, noise)
    u, u_tgt = meanflow_target(self.u_fn(net_fn), z, t, r, noise - x0)
    sq_sum = jnp.sum(jnp.square(u - u_tgt), axis=tuple(range(1, x0.ndim)))  # [B]
    loss = adaptive_weight(sq_sum, self.norm_p, self.norm_eps) * sq_sum
    return loss, {"t": t, "r": r, "sq_sum": sq_sum}
