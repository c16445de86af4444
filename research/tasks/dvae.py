"""DALL-E stage 1, the discrete VAE (Ramesh et al. 2021, arXiv 2102.12092), as a task.

Objective (section 2.1, appendix A.2-A.3): the encoder's logits define q(z | x), a categorical per
grid position over K codes; a Gumbel-softmax sample at temperature tau (soft, in the forward and the
backward pass: not straight-through) goes to the decoder, whose output is a logit-Laplace density
per pixel of the mapped image y = phi(x) in (eps, 1 - eps). The prior is uniform, so the KL term is
sum_k q ln q + ln K per position, on softmax(logits). The loss minimised is

  (NLL(y | z) + beta * KL(q || uniform)) / (H * W * C)      per image, averaged over the batch,

the paper's normalisation by the number of pixel dimensions (256 * 256 * 3 there), under which beta
weighs the per-position KL by beta * h * w / (H * W * C) (beta / 192 in the paper). beta is ramped
0 -> `kl_weight` and tau annealed `tau_start` -> `tau_end`, both by cosine schedules of the train
step passed to `loss` (float32 of the int32 step inside the jitted step: exact up to 2**24 steps;
see `dvae_math.cosine_schedule`). The bound on ln p(y) holds for beta = 1 only; reported ELBs use
beta = 1. Numbers are nats per dimension of the mapped continuous pixels y (a density, so they go
negative): they are not discrete bits/dim of 8-bit images.

`log_b_min` (not in the paper; default None) floors ln b smoothly, ln b = m + softplus(raw - m):
on 8-bit data a pixel at exactly 0 or 255 maps to exactly eps or 1 - eps, where the density grows
without bound as b -> 0. Binarised digits are mostly such pixels (experiments/dvae_mnist.py
measures what the floor buys); the bound stays a bound, of a likelihood with b >= e^m.

Tokens for stage 2 are the argmax of the logits, without Gumbel noise (`encode_tokens`).
"""

from __future__ import annotations

import colorsys
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
from research.tasks import dvae_math, pixels
from research.tasks.base import Batch, Metrics, ModelTask, Variables, options

NUM_SHOWN = 16  # images in reconstructions.png and tokens.png


@dataclasses.dataclass(frozen=True)
class DVAETask(ModelTask):
  model: nn.Module  # research.models.dvae.DiscreteVAE
  kl_weight: float = 6.6  # final beta
  kl_warmup_steps: int = 5_000  # beta: 0 -> kl_weight, cosine
  tau_start: float = 1.0
  tau_end: float = 1.0 / 16.0
  tau_steps: int = 150_000  # tau: tau_start -> tau_end, cosine
  eps: float = dvae_math.LOGIT_LAPLACE_EPS
  log_b_min: float | None = None  # floor on ln b (see `_decode`); None: the paper's unbounded b

  # ---- pieces -----------------------------------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    return self.model.vocab_size

  @property
  def grid_shape(self) -> tuple[int, int]:
    return self.model.grid_shape

  def beta(self, step: Any) -> Any:
    return dvae_math.cosine_schedule(step, 0.0, self.kl_weight, self.kl_warmup_steps)

  def tau(self, step: Any) -> Any:
    return dvae_math.cosine_schedule(step, self.tau_start, self.tau_end, self.tau_steps)

  def _mapped(self, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> y = phi(x / 255) in [eps, 1 - eps], float32."""
    return dvae_math.map_pixels(pixels.to_unit(images), self.eps)

  def _logits(self, params: Any, y: jax.Array) -> jax.Array:
    return self.model.apply({"params": params}, y, method="encode")  # [B, h, w, K]

  def _decode(self, params: Any, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Codes [B, h, w, K] -> (mu, ln b), each float32 [B, H, W, C]."""
    out = self.model.apply({"params": params}, z, method="decode")
    mu, log_b = jnp.split(out, 2, axis=-1)
    if self.log_b_min is not None:  # a smooth floor: ln b = m + softplus(raw - m) > m
      log_b = self.log_b_min + jax.nn.softplus(log_b - self.log_b_min)
    return mu, log_b

  def _nll(self, params: Any, z: jax.Array, y: jax.Array) -> jax.Array:
    """-ln p(y | z) per image [B], nats, summed over the H * W * C dimensions."""
    mu, log_b = self._decode(params, z)
    return -jnp.sum(dvae_math.logit_laplace_log_prob(y, mu, log_b), axis=(1, 2, 3))

  def _pixels(self, mu: jax.Array) -> jax.Array:
    """x_hat = phi^-1(sigmoid(mu)) in [0, 1] (the paper's reconstruction, ignoring b)."""
    return dvae_math.unmap_pixels(jax.nn.sigmoid(mu), self.eps)

  def _tokens_of(self, params: Any, images: jax.Array) -> jax.Array:
    return jnp.argmax(self._logits(params, self._mapped(images)), axis=-1).astype(jnp.int32)

  def _images_of(self, params: Any, tokens: jax.Array) -> jax.Array:
    mu, _ = self._decode(params, jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.float32))
    return pixels.from_unit(self._pixels(mu))

  # ---- for stage 2 ------------------------------------------------------------------------------
  def encode_tokens(self, variables: Variables, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> int32 [B, h, w]: the argmax codes (no Gumbel noise); jittable."""
    return self._tokens_of(variables["model"]["params"], images)

  def decode_tokens(self, variables: Variables, tokens: jax.Array) -> jax.Array:
    """int32 [B, h, w] -> uint8 [B, H, W, C], phi^-1(sigmoid(mu)) of the decoder; jittable."""
    return self._images_of(variables["model"]["params"], tokens)

  # ---- the Task protocol ------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    y = self._mapped(batch["image"])
    h, w = self.grid_shape
    z = jnp.zeros((y.shape[0], h, w, self.vocab_size), jnp.float32)
    return {"model": self.model.init(rng, y, z)}

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
    params = variables["model"]["params"]
    beta, tau = self.beta(step), self.tau(step)
    y = self._mapped(batch["image"])  # [B, H, W, C]
    logits = self._logits(params, y)  # [B, h, w, K]
    z = dvae_math.gumbel_softmax(rng, logits, tau)  # relaxed sample, section 2.1
    nll = self._nll(params, z, y)  # [B]
    kl = jnp.sum(dvae_math.kl_to_uniform(logits), axis=(1, 2))  # [B]
    dims = math.prod(self.model.image_shape)
    loss = jnp.mean(nll + beta * kl) / dims  # appendix A.2: normalised per pixel dimension
    counts = jnp.sum(jax.nn.one_hot(jnp.argmax(logits, -1), self.vocab_size), axis=(0, 1, 2))
    metrics = {
      "nll_per_dim": jnp.mean(nll) / dims,
      "kl_per_dim": jnp.mean(kl) / dims,
      "relaxed_elb_per_dim": -jnp.mean(nll + kl) / dims,  # beta = 1: the bound itself
      "beta": beta,
      "tau": tau,
      "perplexity": dvae_math.perplexity(counts),  # of the argmax codes in this batch
    }
    return loss, metrics, {}

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """Decodes codes drawn iid from the uniform prior: honest samples of the dVAE as a generative
    model on its own (its prior is uniform until stage 2 learns one), so they look like texture,
    not digits. Reconstructions are what `artifacts` writes."""
    h, w = self.grid_shape
    tokens = jax.random.randint(rng, (num, h, w), 0, self.vocab_size, jnp.int32)
    return {"images": self.decode_tokens(variables, tokens)}

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Any:
    """Masked sums over one eval batch of the per-image terms, and the argmax code histogram."""
    params = variables["model"]["params"]
    mask = batch["mask"]  # [B]
    y = self._mapped(batch["image"])
    logits = self._logits(params, y)
    kl = jnp.sum(dvae_math.kl_to_uniform(logits), axis=(1, 2))
    nll_relaxed = self._nll(params, dvae_math.gumbel_softmax(rng, logits, self.tau_end), y)
    nll_hard = self._nll(
      params, dvae_math.categorical_sample(jax.random.fold_in(rng, 1), logits), y
    )
    tokens = jnp.argmax(logits, axis=-1)  # [B, h, w]
    onehot = jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.float32)
    mu, log_b = self._decode(params, onehot)
    nll_argmax = -jnp.sum(dvae_math.logit_laplace_log_prob(y, mu, log_b), axis=(1, 2, 3))
    x = pixels.to_unit(batch["image"])
    mse = jnp.mean((self._pixels(mu) - x) ** 2, axis=(1, 2, 3))  # [B], on [0, 1] pixels
    per_image = {
      "kl": kl,
      "nll_relaxed": nll_relaxed,
      "nll_hard": nll_hard,
      "nll_argmax": nll_argmax,
      "mse": mse,
    }
    sums = {k: jnp.sum(v * mask) for k, v in per_image.items()}
    sums["count"] = jnp.sum(mask)
    sums["codes"] = jnp.einsum("b,bhwk->k", mask, onehot)  # [K]
    return sums

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    """ELB terms over the held-out split, in nats per dimension of the mapped pixels (beta = 1):

    - ``elb_per_dim``: the true ELB, one hard sample z ~ q(z | x) (Gumbel-max) per image;
    - ``relaxed_elb_per_dim``: the relaxed ELB the training optimises, Gumbel-softmax at tau_end;
    - ``argmax_nll_per_dim``: -ln p(y | argmax codes), what stage 2's tokens reconstruct;
    - ``mse`` / ``psnr_db``: reconstruction from the argmax codes, x_hat = phi^-1(sigmoid(mu)) on
      [0, 1] pixels; PSNR = 10 log10(1 / mse) of the split's mean MSE;
    - ``codebook_perplexity`` (exp of the entropy of the argmax code histogram over the split) and
      ``codebook_usage`` (the share of the K codes used at least once), ``codes_used``.
    """
    n = float(totals["count"])
    m = {k: float(v) / n for k, v in totals.items() if k not in ("count", "codes")}
    dims = math.prod(self.model.image_shape)
    codes = np.asarray(totals["codes"], np.float64)
    return {
      "elb_per_dim": -(m["nll_hard"] + m["kl"]) / dims,
      "relaxed_elb_per_dim": -(m["nll_relaxed"] + m["kl"]) / dims,
      "nll_per_dim": m["nll_hard"] / dims,
      "relaxed_nll_per_dim": m["nll_relaxed"] / dims,
      "argmax_nll_per_dim": m["nll_argmax"] / dims,
      "kl_per_dim": m["kl"] / dims,
      "elb_nats": -(m["nll_hard"] + m["kl"]),
      "kl_nats": m["kl"],
      "mse": m["mse"],
      "psnr_db": 10.0 * math.log10(1.0 / max(m["mse"], 1e-12)),
      "codebook_perplexity": float(dvae_math.perplexity(jnp.asarray(codes))),
      "codebook_usage": float(np.mean(codes > 0)),
      "codes_used": float(np.sum(codes > 0)),
      "vocab_size": float(self.vocab_size),
      "num_examples": n,
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """reconstructions.png: held-out images above their decoded argmax codes; tokens.png: the same
    images above their code grids, each code a fixed colour, upsampled to the image size."""
    images = batch["image"][:NUM_SHOWN]  # [n, H, W, C]
    tokens = self.encode_tokens(variables, images)  # [n, h, w]
    recon = self.decode_tokens(variables, tokens)
    f = self.model.downsample
    colours = jnp.asarray(_palette(self.vocab_size))[tokens]  # [n, h, w, 3]
    colours = jnp.repeat(jnp.repeat(colours, f, axis=1), f, axis=2)  # [n, H, W, 3]
    rgb = jnp.broadcast_to(images, (*images.shape[:3], 3)) if images.shape[-1] == 1 else images
    return {
      "reconstructions.png": pixels.tile(jnp.stack([images, recon])),
      "tokens.png": pixels.tile(jnp.stack([rgb, colours])),
    }


def _palette(k: int) -> np.ndarray:
  """uint8 [K, 3]: code i gets hue i * golden ratio (neighbouring ids look different)."""
  hues = (np.arange(k) * 0.6180339887) % 1.0
  rgb = [
    colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.75 + 0.25 * (i % 3) / 2)
    for i, h in enumerate(hues)
  ]
  return np.round(np.asarray(rgb) * 255).astype(np.uint8)


@TASKS.register("dvae")
def make_dvae_task(config: Any, info: data.DatasetInfo) -> DVAETask:
  fields = {**config.model.to_dict(), "image_shape": tuple(info.image_shape)}
  groups = int(fields.get("num_groups", 4))
  f = 2 ** (groups - 1)
  h, w, _ = info.image_shape
  if groups < 1 or h % f or w % f:
    raise UserError(
      f"images {h}x{w} do not divide by the dVAE's downsampling 2**(num_groups-1)={f}; "
      "change config.model.num_groups or config.data.image_size"
    )
  task = DVAETask(model=build_module(fields), **options(DVAETask, config.task, computed=("model",)))
  if not 0 < task.tau_end <= task.tau_start:
    raise UserError(
      f"config.task.tau_end={task.tau_end} must be in (0, tau_start={task.tau_start}]; "
      "the paper uses 1/16"
    )
  return task
