"""The VAE family (Kingma & Welling 2013) as a task for the shared trainer.

Likelihoods:
- ``bernoulli``: pixels binarised by sampling x_bin ~ Bernoulli(x / 255), fresh every training step
  ("dynamic" binarisation); evaluation binarises the held-out images once with a fixed key, so its
  numbers are comparable across runs. Reported in nats per image.
- ``discretized_logistic``: 8-bit pixels, one logistic per pixel discretised to 256 bins
  (a proper likelihood, so the ELBO converts to bits/dim).

Training minimises the negative ELBO averaged over the batch; eval adds the IWAE bound with
``task.iwae_k`` samples (Burda et al. 2015) as the NLL estimate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import pixels, vae_math
from research.tasks.base import Batch, Metrics, ModelTask, Variables, masked_sums, options

LIKELIHOODS = {"bernoulli": 1, "discretized_logistic": 2}  # name -> decoder outputs per channel
# Class pairs for the interpolation figure (a 7 turning into a 1, ...), first match in the batch.
INTERPOLATION_PAIRS = ((7, 1), (3, 8), (0, 6), (4, 9), (2, 5), (1, 7), (5, 3), (9, 0))


@dataclasses.dataclass(frozen=True)
class VAETask(ModelTask):
  model: nn.Module
  likelihood: str = "bernoulli"  # one of LIKELIHOODS
  iwae_k: int = 100  # importance samples of the IWAE bound in eval
  iwae_chunk: int = 50  # of which this many per decoder call

  # ---- data -------------------------------------------------------------------------------------
  def _targets(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(encoder input in [0, 1], likelihood target) from uint8 images [B, H, W, C].

    `rng` is one key, or one key per image ([B]) for a binarisation that is a function of each
    image alone (eval: the same binary held-out set whatever the batch size or process count).
    """
    x = pixels.to_unit(images)
    if self.likelihood == "bernoulli":
      if rng.shape:
        x = jax.vmap(lambda k, p: jax.random.bernoulli(k, p))(rng, x).astype(jnp.float32)
      else:
        x = jax.random.bernoulli(rng, x).astype(jnp.float32)
      return x, x
    return x, x * 2.0 - 1.0  # the discretized logistic works on [-1, 1]

  def _log_lik(self, out: jax.Array, target: jax.Array) -> jax.Array:
    """log p(x | z) per example: decoder output [B, H, W, C*P] -> [B]."""
    if self.likelihood == "bernoulli":
      return vae_math.bernoulli_log_prob(out, target)
    mean, log_scale = jnp.split(out, 2, axis=-1)
    return vae_math.discretized_logistic_log_prob(
      jnp.tanh(mean), jnp.maximum(log_scale, -7.0), target
    )

  def _mean_image(self, out: jax.Array) -> jax.Array:
    """Decoder output -> the likelihood's mean as uint8 [B, H, W, C]."""
    if self.likelihood == "bernoulli":
      return pixels.from_unit(jax.nn.sigmoid(out))
    return pixels.from_unit((jnp.tanh(jnp.split(out, 2, axis=-1)[0]) + 1.0) / 2.0)

  @property
  def latent_dim(self) -> int:
    return self.model.latent_dim

  # ---- the Task protocol -------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = batch["image"].astype(jnp.float32)
    noise = jnp.zeros((x.shape[0], self.latent_dim))
    return {"model": self.model.init(rng, x, noise)}

  def elbo_terms(
    self, params: Any, images: jax.Array, bin_key: jax.Array, z_key: jax.Array
  ) -> dict[str, jax.Array]:
    """Per-example ELBO pieces [B] (nats), one posterior sample per image."""
    x, target = self._targets(images, bin_key)
    noise = jax.random.normal(z_key, (x.shape[0], self.latent_dim))
    out, mean, logvar = self.model.apply({"params": params}, x, noise)
    log_lik = self._log_lik(out, target)
    kl = vae_math.gaussian_kl(mean, logvar)
    return {"elbo": log_lik - kl, "log_lik": log_lik, "kl": kl}

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
    terms = self.elbo_terms(variables["model"]["params"], batch["image"], *jax.random.split(rng))
    metrics = {k: jnp.mean(v) for k, v in terms.items()}
    return -metrics["elbo"], metrics, {}

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    z = jax.random.normal(rng, (num, self.latent_dim))
    out = self.model.apply({"params": variables["model"]["params"]}, z, method="decode")
    return {"images": self._mean_image(out)}

  def iwae_terms(
    self, params: Any, images: jax.Array, bin_key: jax.Array, z_key: jax.Array
  ) -> dict[str, jax.Array]:
    """The IWAE bound with k = iwae_k samples per example [B], computed in chunks of iwae_chunk."""
    x, target = self._targets(images, bin_key)
    mean, logvar = self.model.apply({"params": params}, x, method="encode")
    chunk = math.gcd(self.iwae_k, self.iwae_chunk)

    def log_weights(key: jax.Array) -> jax.Array:  # [chunk, B]
      eps = jax.random.normal(key, (chunk, *mean.shape))
      z = mean + jnp.exp(0.5 * logvar) * eps
      out = self.model.apply({"params": params}, z.reshape(-1, mean.shape[-1]), method="decode")
      out = out.reshape(chunk, x.shape[0], *out.shape[1:])
      log_lik = jax.vmap(self._log_lik, in_axes=(0, None))(out, target)
      log_prior = vae_math.gaussian_log_prob(z, 0.0, jnp.zeros_like(logvar))
      log_q = vae_math.gaussian_log_prob(z, mean, logvar)
      return log_lik + log_prior - log_q

    lw = jax.lax.map(log_weights, jax.random.split(z_key, self.iwae_k // chunk))
    lw = lw.reshape(self.iwae_k, -1)
    return {"iwae": vae_math.iwae_bound(lw)}

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums over one eval batch of the ELBO terms and the IWAE bound."""
    params = variables["model"]["params"]
    # Each held-out image is binarised with a key derived from its pixels, so every eval sees the
    # same binary digits whatever the batch size or process count; z varies with rng.
    bin_key = image_keys(jax.random.key(12345), batch["image"])
    terms = self.elbo_terms(params, batch["image"], bin_key, rng)
    terms.update(self.iwae_terms(params, batch["image"], bin_key, jax.random.fold_in(rng, 1)))
    return masked_sums(terms, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    n = float(totals["count"])
    means = {k: float(v) / n for k, v in totals.items()}
    dims = math.prod(self.model.image_shape)
    results = {
      "elbo_nats": means["elbo"],
      "neg_elbo_nats": -means["elbo"],
      "kl_nats": means["kl"],
      "recon_nats": -means["log_lik"],
      f"iwae{self.iwae_k}_nll_nats": -means["iwae"],
      "num_examples": n,
    }
    if self.likelihood == "discretized_logistic":
      results["neg_elbo_bits_per_dim"] = -means["elbo"] / (dims * np.log(2))
      results[f"iwae{self.iwae_k}_nll_bits_per_dim"] = -means["iwae"] / (dims * np.log(2))
    return results

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    params = variables["model"]["params"]
    x, _ = self._targets(batch["image"], rng)
    n = min(16, x.shape[0])
    mean, _ = self.model.apply({"params": params}, x[:n], method="encode")
    recon = self._mean_image(self.model.apply({"params": params}, mean, method="decode"))
    originals = pixels.from_unit(x[:n])
    return {
      "reconstructions.png": pixels.tile(jnp.stack([originals, recon])),  # originals, decoded
      "interpolation.png": self._interpolation(params, batch, x),
    }

  def _interpolation(self, params: Any, batch: Batch, x: jax.Array, steps: int = 10) -> jax.Array:
    """Slerp between posterior means of held-out digits of different classes; one row per pair."""
    b = x.shape[0]
    if "label" in batch:
      labels = jnp.where(batch["mask"] > 0, batch["label"], -1)
      first = lambda c: jnp.argmax(labels == c)  # (0 if absent)
      idx = jnp.array([[first(a), first(c)] for a, c in INTERPOLATION_PAIRS])
    else:
      idx = jnp.arange(2 * len(INTERPOLATION_PAIRS)).reshape(-1, 2) % b
    mean, _ = self.model.apply({"params": params}, x, method="encode")
    t = jnp.linspace(0.0, 1.0, steps)
    paths = jax.vmap(lambda ab: vae_math.slerp(mean[ab[0]], mean[ab[1]], t))(idx)  # [P, T, Z]
    out = self.model.apply({"params": params}, paths.reshape(-1, paths.shape[-1]), method="decode")
    return pixels.tile(self._mean_image(out).reshape(idx.shape[0], steps, *x.shape[1:]))


def image_keys(base: jax.Array, images: jax.Array) -> jax.Array:
  """One key per image [B], a function of its pixels alone (a multiplicative hash, mod 2**32)."""
  flat = images.reshape(images.shape[0], -1).astype(jnp.uint32)  # [B, D]
  odd = jnp.arange(flat.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(jnp.sum(flat * odd, axis=1))


@TASKS.register("vae")
def make_vae_task(config: Any, info: data.DatasetInfo) -> VAETask:
  opts = options(VAETask, config.task, computed=("model",))
  likelihood = opts.get("likelihood", VAETask.likelihood)
  if likelihood not in LIKELIHOODS:
    raise UserError(
      f"unknown likelihood {likelihood!r} in config.task.likelihood; use {sorted(LIKELIHOODS)}"
    )
  fields = {**config.model.to_dict(), "image_shape": info.image_shape}
  fields["out_params"] = LIKELIHOODS[likelihood]
  return VAETask(model=build_module(fields), **opts)
