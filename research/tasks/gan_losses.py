"""GAN objectives on discriminator logits, and the gradient regularisers on D's input.

Every loss takes raw logits ``d`` (float [B]) and uses softplus / log-sigmoid, never ``log`` of a
sigmoid: with ``D = sigmoid(d)``, ``log D = -softplus(-d)`` and ``log(1 - D) = -softplus(d)``.
Each function returns a scalar to *minimise* for its player.

- ``minimax`` (Goodfellow et al. 2014, eq. 1): D maximises E log D(x) + E log(1 - D(G(z))); G
  minimises E log(1 - D(G(z))) (saturates when D rejects the fakes confidently).
- ``non_saturating`` (Goodfellow et al. 2014, sec. 3): same D, G maximises E log D(G(z)).
- ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D minimises E relu(1 - d(x)) + E relu(1 + d(G(z))),
  G minimises -E d(G(z)).
- ``lsgan`` (Mao et al. 2017, eq. 2 with a = 0, b = c = 1): D minimises E (d(x) - 1)^2 + E d(G(z))^2,
  G minimises E (d(G(z)) - 1)^2, on raw outputs (no sigmoid), as pix2pix/CycleGAN's code (MSE to
  1 / 0; the paper's 1/2 factors are the tasks' ``disc_loss_scale``).
- ``wgan`` (Arjovsky et al. 2017): the critic minimises E d(G(z)) - E d(x), G minimises -E d(G(z));
  used with the gradient penalty (Gulrajani et al. 2017) and TransGAN's drift term eps E d(x)^2.

The regularisers differentiate D's output with respect to its *input* inside the loss, so the outer
gradient (with respect to D's parameters) is a second-order one and flows through them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

LOSSES = ("minimax", "non_saturating", "hinge", "lsgan", "wgan")

# A discriminator as a function of its input: x [B, ...] -> (logits [B], aux).
DiscFn = Callable[[jax.Array], tuple[jax.Array, Any]]


def disc_loss(kind: str, d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """The discriminator's loss from logits on real [B] and generated [B] examples."""
  if kind in ("minimax", "non_saturating"):
    # -(E log D(x) + E log(1 - D(G(z)))), Goodfellow et al. 2014 eq. 1.
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
  if kind == "lsgan":
    return jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake))
  if kind == "wgan":
    return jnp.mean(d_fake) - jnp.mean(d_real)
  raise ValueError(f"unknown GAN loss {kind!r}; use one of {LOSSES}")


def gen_loss(kind: str, d_fake: jax.Array) -> jax.Array:
  """The generator's loss from the discriminator's logits on generated examples [B]."""
  if kind == "minimax":
    return -jnp.mean(jax.nn.softplus(d_fake))  # E log(1 - D(G(z))) = -E softplus(d)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-d_fake))  # -E log D(G(z))
  if kind == "lsgan":
    return jnp.mean(jnp.square(d_fake - 1.0))
  if kind in ("hinge", "wgan"):
    return -jnp.mean(d_fake)
  raise ValueError(f"unknown GAN loss {kind!r}; use one of {LOSSES}")


def _per_example_sq_norm(g: jax.Array) -> jax.Array:
  """[B, ...] -> squared L2 norm per example [B]."""
  return jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=-1)


def r1_penalty(d_fn: DiscFn, real: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
  """E ||grad_x d(x)||^2 on real data (Mescheder et al. 2018, eq. 9, without the gamma/2).

  Uses one forward pass for both the logits and the input gradient (a VJP with ones), so a caller
  applying R1 every step gets D's real logits for free. Returns (penalty, logits [B], aux).
  """
  logits, vjp, aux = jax.vjp(d_fn, real, has_aux=True)
  (grad_x,) = vjp(jnp.ones_like(logits))  # d sum_i d(x_i) / dx: row i is grad of d(x_i)
  return jnp.mean(_per_example_sq_norm(grad_x)), logits, aux


def gradient_penalty(d_fn: DiscFn, real: jax.Array, fake: jax.Array, rng: jax.Array) -> jax.Array:
  """WGAN-GP: E (||grad d(x_hat)||_2 - 1)^2 on x_hat = t x + (1 - t) G(z), t ~ U[0, 1] per example.

  Gulrajani et al. 2017, Algorithm 1 and eq. 3 (without the lambda).
  """
  t = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  x_hat = t * real + (1.0 - t) * fake
  logits, vjp, _ = jax.vjp(d_fn, x_hat, has_aux=True)
  (grad_x,) = vjp(jnp.ones_like(logits))
  norm = jnp.sqrt(_per_example_sq_norm(grad_x) + 1e-12)  # the eps keeps d||g||/dg finite at g = 0
  return jnp.mean(jnp.square(norm - 1.0))


def lazy_r1(d_fn: DiscFn, real: jax.Array, step: jax.Array, every: int) -> jax.Array:
  """R1 applied every `every` steps and scaled by `every` (StyleGAN2, Karras et al. 2020, sec. 3.1).

  A `lax.cond` on the step: the double backward pass runs only on the steps that need it, and the
  jitted step still compiles once.
  """
  return jax.lax.cond(
    step % every == 0,
    lambda x: every * r1_penalty(d_fn, x)[0],
    lambda x: jnp.zeros((), jnp.float32),
    real,
  )
