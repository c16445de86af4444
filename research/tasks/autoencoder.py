"""The first stage of latent diffusion: the KL-regularised autoencoder of Rombach et al. 2022
(2112.10752, sec. 3 and appendix G; CompVis/latent-diffusion ``AutoencoderKL`` with the loss
``LPIPSWithDiscriminator``, ``ldm/modules/losses/contperceptual.py``) as a task.

The network is `research.models.autoencoder_kl.AutoencoderKL` (the diffusers layout of the same
ResNet encoder/decoder): x in [-1, 1] -> q(z | x) = N(mean, diag(exp(logvar))) on an
(H/f, W/f, latent_channels) grid -> x_rec. Parts, updated in this order each step (LDM's
``optimizer_idx`` 0 then 1): ``model`` (encoder, decoder and the 1x1 quant convs), and ``disc``
(a PatchGAN, `research.models.image_translation.PatchDiscriminator`) when ``disc_weight > 0``.

Loss of ``model``, per batch of B images, z ~ q(z | x) (a posterior sample, as LDM trains):

  nll  = sum_{pixels, channels} |x - x_rec| / B            (LDM: L1 + LPIPS, summed, / B)
  kl   = sum_{latent dims} KL(q(z | x) || N(0, I)) / B     (closed form, Kingma & Welling app. B)
  g    = -mean D(x_rec)                                    (the generator's hinge term)
  d_w  = disc_weight * clip(||grad_L nll|| / (||grad_L g|| + 1e-4), 0, 1e4), stop-gradient
  loss = nll + kl_weight * kl + d_w * adopt(disc_factor, step) * g

with L the decoder's last conv kernel (``decoder/conv_out``, LDM's ``get_last_layer``; Esser et
al. 2021, eq. 7) and adopt(w, step) = w from step ``disc_start`` on, else 0. Departures from LDM:
no LPIPS (its VGG weights cannot be obtained offline): the pixel term is L1 alone, on [-1, 1].
LDM's nll divides by a learned scalar variance, rec / e^s + s; its optimizer never updates s
(``configure_optimizers`` lists the encoder, decoder and quant convs only), so s stays at its
initial 0 and nll = rec, which is what is computed here.

Loss of ``disc``: adopt(disc_factor, step) * 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))
(``disc_loss="hinge"``; ``"vanilla"`` uses softplus), x_rec stop-gradient. Both branches are
`lax.cond` on the step, so before ``disc_start`` the discriminator passes cost nothing and the
adversarial terms are exactly zero (their gradients too). D runs in training mode with batch
statistics; its running averages change only in its own update.

Evaluation (held-out, reconstructions of the posterior *mean*, quantised to uint8): MSE, L1, PSNR
and SSIM on [0, 1] pixels, KL in nats per image, and the statistics of the posterior means z over
every latent element of the split: ``latent_std`` and ``scale_factor`` = 1 / latent_std, LDM's
``scale_by_std`` (which takes the std of one batch of posterior samples; SD's 0.18215 = 1 / 5.49).
``sample_latent_std`` is the std of posterior samples, sqrt(latent_std^2 + E[sigma^2]).

For the second stage: `encode` (uint8 images -> posterior means) and `decode` (latents -> uint8
images), both jittable, on unscaled latents; multiply by the run's ``scale_factor`` before the
diffusion model and divide after. `sample` decodes z ~ N(0, I): a first stage is no generative
model by itself, so these are only a smoke check; ``reconstructions.png`` is what matters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.errors import UserError
from research.models.image_translation import patch_layers
from research.registry import TASKS, build_module
from research.tasks import gan_losses, pixels, translation_metrics, vae_math
from research.tasks.base import Batch, Metrics, Variables, masked_sums, options

DISC_LOSSES = {"hinge": "hinge", "vanilla": "non_saturating"}  # LDM name -> gan_losses kind
# taming-transformers' NLayerDiscriminator: ndf 64, 3 strided layers, BatchNorm, N(0, 0.02) init.
DEFAULT_DISCRIMINATOR = {"name": "patch_discriminator", "features": 64, "n_layers": 3}
LAST_LAYER = ("decoder", "conv_out")  # LDM's get_last_layer: decoder.conv_out.weight
NUM_SHOWN = 16  # images in reconstructions.png


def _conv_out(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """The decoder's last layer, a 3x3 conv with padding 1: [B, H, W, C0] -> [B, H, W, C]."""
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(h, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
  return y + bias


@dataclasses.dataclass(frozen=True, eq=False)
class AutoencoderTask:
  model: nn.Module  # research.models.autoencoder_kl.AutoencoderKL
  discriminator: nn.Module | None = None  # PatchDiscriminator; None: no adversarial term
  image_shape: tuple[int, int, int] = (28, 28, 1)  # set by the factory from the data
  kl_weight: float = 1e-6  # LDM kl_weight
  disc_weight: float = 0.5  # LDM discriminator_weight (scales the adaptive weight); 0 = no D
  disc_start: int = 50_001  # LDM disc_start: the adversarial terms are on from this step
  disc_factor: float = 1.0  # LDM disc_factor, adopted (0 before disc_start)
  disc_loss: str = "hinge"  # one of DISC_LOSSES
  ema_parts: ClassVar[tuple[str, ...]] = ("model",)

  @property
  def parts(self) -> tuple[str, ...]:
    """The autoencoder first, then D (LDM's optimizer order); D only with a discriminator."""
    return ("model",) if self.discriminator is None else ("model", "disc")

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.model.block_out_channels) - 1)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """(h, w, c) of one image's latent grid."""
    h, w, _ = self.image_shape
    f = self.downsample
    return h // f, w // f, self.model.latent_channels

  def adopted_factor(self, step: jax.Array) -> jax.Array:
    """LDM's adopt_weight: disc_factor from step disc_start on, 0 before (float32 [])."""
    return jnp.where(step >= self.disc_start, self.disc_factor, 0.0).astype(jnp.float32)

  # ---- networks ----------------------------------------------------------------------------------
  def _encode(self, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.model.apply({"params": params}, x, method="encode")  # each [B, h, w, c]

  def _decode(self, params: Any, z: jax.Array) -> jax.Array:
    return self.model.apply({"params": params}, z, method="decode")  # [B, H, W, C]

  def _decode_with_features(self, params: Any, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x_rec [B, H, W, C], the input of the last conv [B, H, W, C0]) for the adaptive weight."""
    seen = []

    def grab(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and context.module.path == LAST_LAYER:
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      x_rec = self._decode(params, z)
    return x_rec, seen[0]

  def _judge(self, disc: dict[str, Any], x: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """D's patch logits [B, h', w'] in training mode, and D's variables with updated statistics."""
    logits, updated = self.discriminator.apply(disc, x, None, train=True, mutable=["batch_stats"])
    return logits, {**disc, **updated}

  @staticmethod
  def _sample_posterior(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

  @staticmethod
  def _kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(q(z | x) || N(0, I)) per image [B], summed over all h * w * c latent dimensions."""
    b = mean.shape[0]
    return vae_math.gaussian_kl(mean.reshape(b, -1), logvar.reshape(b, -1))

  # ---- for the second stage -----------------------------------------------------------------------
  def encode(self, variables: Variables, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> the posterior means, float32 [B, h, w, c] (unscaled); jittable."""
    mean, _ = self._encode(variables["model"]["params"], pixels.to_signed(images))
    return mean

  def decode(self, variables: Variables, latents: jax.Array) -> jax.Array:
    """Unscaled latents float [B, h, w, c] -> uint8 images [B, H, W, C]; jittable."""
    return pixels.from_signed(self._decode(variables["model"]["params"], latents))

  # ---- the Task protocol ---------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    x = pixels.to_signed(batch["image"])
    m_key, d_key = jax.random.split(rng)
    out = {"model": dict(self.model.init(m_key, x))}
    if self.discriminator is not None:
      out["disc"] = dict(self.discriminator.init(d_key, x, None, train=False))
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
    x = pixels.to_signed(batch["image"])  # [B, H, W, C]
    if part == "model":
      return self._model_loss(variables, x, rng, step)
    if part == "disc" and self.discriminator is not None:
      return self._disc_loss(variables, x, rng, step, train)
    raise ValueError(f"unknown part {part!r}; this autoencoder has {self.parts}")

  def _model_loss(
    self, variables: Variables, x: jax.Array, rng: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, Metrics, Variables]:
    params = variables["model"]["params"]
    b = x.shape[0]
    mean, logvar = self._encode(params, x)
    z = self._sample_posterior(rng, mean, logvar)  # LDM trains on a posterior sample
    x_rec, h = self._decode_with_features(params, z)
    nll = jnp.sum(jnp.abs(x - x_rec)) / b  # contperceptual.py: torch.sum(nll_loss) / B
    kl = jnp.mean(self._kl(mean, logvar))  # torch.sum(kl_loss) / B
    loss = nll + self.kl_weight * kl
    metrics = {
      "nll": nll,
      "rec_l1": jnp.mean(jnp.abs(x - x_rec)),  # per pixel, on [-1, 1]
      "kl": kl,
      "posterior_std": jnp.mean(jnp.exp(0.5 * logvar)),
    }
    if self.discriminator is None:
      return loss, metrics, {}
    factor = self.adopted_factor(step)

    def adversarial() -> tuple[jax.Array, jax.Array]:
      d_fake, _ = self._judge(variables["disc"], x_rec)  # D's statistics are not updated here
      g = gan_losses.gen_loss("hinge", d_fake)  # -mean D(x_rec), for either D loss (as LDM)
      return g, self.adaptive_weight(params, variables["disc"], x, h)

    off = lambda: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    g, d_w = jax.lax.cond(step >= self.disc_start, adversarial, off)
    loss = loss + d_w * factor * g
    metrics.update({"g_loss": g, "d_weight": d_w, "disc_factor": factor})
    return loss, metrics, {}

  def adaptive_weight(
    self, params: Any, disc: dict[str, Any], x: jax.Array, h: jax.Array
  ) -> jax.Array:
    """disc_weight * clip(||grad_L nll|| / (||grad_L g|| + 1e-4), 0, 1e4), L = the last conv's
    kernel (LDM ``calculate_adaptive_weight``; Esser et al. 2021, eq. 7), a constant for autodiff.

    Both gradients need only h, the last conv's input, and the cotangent at its output, so they
    are taken with respect to the kernel of a re-applied last conv on the stop-gradient h.
    """
    sg = jax.lax.stop_gradient
    last = params[LAST_LAYER[0]][LAST_LAYER[1]]
    h, kernel, bias, disc = sg(h), sg(last["kernel"]), sg(last["bias"]), sg(disc)
    b = x.shape[0]
    nll_of = lambda k: jnp.sum(jnp.abs(x - _conv_out(h, k, bias))) / b
    g_of = lambda k: gan_losses.gen_loss("hinge", self._judge(disc, _conv_out(h, k, bias))[0])
    nll_grad, g_grad = jax.grad(nll_of)(kernel), jax.grad(g_of)(kernel)
    ratio = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
    return sg(jnp.clip(ratio, 0.0, 1e4) * self.disc_weight)

  def _disc_loss(
    self, variables: Variables, x: jax.Array, rng: jax.Array, step: jax.Array, train: bool
  ) -> tuple[jax.Array, Metrics, Variables]:
    disc = variables["disc"]
    factor = self.adopted_factor(step)

    def on() -> tuple[jax.Array, jax.Array, jax.Array, dict]:
      params = variables["model"]["params"]
      mean, logvar = self._encode(params, x)
      x_rec = jax.lax.stop_gradient(self._decode(params, self._sample_posterior(rng, mean, logvar)))
      d_real, d1 = self._judge(disc, x)
      d_fake, d2 = self._judge(d1, x_rec)
      d_loss = 0.5 * gan_losses.disc_loss(DISC_LOSSES[self.disc_loss], d_real, d_fake)
      stats = {k: v for k, v in d2.items() if k != "params"}
      return d_loss, jnp.mean(d_real), jnp.mean(d_fake), stats

    def off() -> tuple[jax.Array, jax.Array, jax.Array, dict]:
      zero = jnp.zeros((), jnp.float32)
      return zero, zero, zero, {k: v for k, v in disc.items() if k != "params"}

    d_loss, d_real, d_fake, stats = jax.lax.cond(step >= self.disc_start, on, off)
    metrics = {"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "disc_factor": factor}
    return factor * d_loss, metrics, ({"disc": stats} if train else {})

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """Decodes z ~ N(0, I): a smoke check only (the first stage has no prior of its own)."""
    z = jax.random.normal(rng, (num, *self.latent_shape))
    return {"images": self.decode(variables, z)}

  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    """Masked sums of the per-image fidelity of the mean's reconstruction and of the KL, and of
    the posterior means over all latent elements of the real rows (for latent_std)."""
    del rng  # deterministic: reconstructions decode the posterior mean
    params = variables["model"]["params"]
    mask = batch["mask"]  # [B]
    mean, logvar = self._encode(params, pixels.to_signed(batch["image"]))
    rec = pixels.to_unit(pixels.from_signed(self._decode(params, mean)))  # uint8 round trip
    x = pixels.to_unit(batch["image"])
    per_image = {
      "mse": jnp.mean(jnp.square(rec - x), axis=(1, 2, 3)),
      "l1": translation_metrics.l1(rec, x),
      "psnr": translation_metrics.psnr(rec, x),
      "ssim": translation_metrics.ssim(rec, x),
      "kl": self._kl(mean, logvar),
    }
    sums = masked_sums(per_image, mask)
    m = mask[:, None, None, None]
    sums["z_sum"] = jnp.sum(mean * m)
    sums["z_sq_sum"] = jnp.sum(jnp.square(mean) * m)
    sums["var_sum"] = jnp.sum(jnp.exp(logvar) * m)
    sums["z_count"] = jnp.sum(mask) * math.prod(mean.shape[1:])
    return sums

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    """Means per held-out image (``mse``, ``l1``, ``ssim`` on [0, 1]; ``psnr_db`` the mean of the
    per-image PSNRs; ``kl_nats``), and over all latent elements: ``latent_mean``, ``latent_std``
    (the population std of the posterior means), ``scale_factor`` = 1 / latent_std,
    ``posterior_std_rms`` = sqrt(E[exp(logvar)]) and ``sample_latent_std``."""
    t = {k: float(np.asarray(v, np.float64)) for k, v in totals.items()}
    n, count = t["count"], t["z_count"]
    z_mean = t["z_sum"] / count
    z_var = max(t["z_sq_sum"] / count - z_mean**2, 0.0)
    post_var = t["var_sum"] / count
    z_std = math.sqrt(z_var)
    return {
      "mse": t["mse"] / n,
      "l1": t["l1"] / n,
      "psnr_db": t["psnr"] / n,
      "ssim": t["ssim"] / n,
      "kl_nats": t["kl"] / n,
      "latent_mean": z_mean,
      "latent_std": z_std,
      "scale_factor": 1.0 / z_std if z_std > 0 else math.inf,
      "posterior_std_rms": math.sqrt(post_var),
      "sample_latent_std": math.sqrt(z_var + post_var),
      "num_examples": n,
    }

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """``reconstructions.png``: held-out images above the decodes of their posterior means."""
    images = batch["image"][:NUM_SHOWN]
    recon = self.decode(variables, self.encode(variables, images))
    return {"reconstructions.png": pixels.tile(jnp.stack([images, recon]))}


def _patch_output_side(side: int, n_layers: int) -> int:
  for k, s in patch_layers(n_layers):
    side = (side + 2 * ((k - 1) // 2) - k) // s + 1
  return side


@TASKS.register("autoencoder")
def make_autoencoder_task(config: Any, info: data.DatasetInfo) -> AutoencoderTask:
  m = config.model
  h, w, c = info.image_shape
  fields = {k: v for k, v in m.to_dict().items() if k != "discriminator"}
  chans = tuple(fields.get("block_out_channels", ()))
  fields.update(in_channels=c, out_channels=c, block_out_channels=chans)  # channels: the data's
  groups = int(fields.get("norm_num_groups", 32))
  f = 2 ** (len(chans) - 1) if chans else 0
  if not chans or h % f or w % f:
    raise UserError(
      f"images {h}x{w} do not divide by the downsampling 2**(len(block_out_channels)-1)={f}; "
      "change config.model.block_out_channels or config.data.image_size"
    )
  if any(ch % groups for ch in chans):
    raise UserError(
      f"config.model.norm_num_groups={groups} does not divide block_out_channels={list(chans)}"
    )
  opts = options(AutoencoderTask, config.task, computed=("model", "discriminator", "image_shape"))
  disc_loss = opts.get("disc_loss", AutoencoderTask.disc_loss)
  if disc_loss not in DISC_LOSSES:
    raise UserError(f"config.task.disc_loss={disc_loss!r}; use one of {sorted(DISC_LOSSES)}")
  discriminator = None
  if opts.get("disc_weight", AutoencoderTask.disc_weight) > 0:
    d_fields = dict(m.discriminator.to_dict() if "discriminator" in m else DEFAULT_DISCRIMINATOR)
    side = _patch_output_side(min(h, w), int(d_fields.get("n_layers", 3)))
    if d_fields.get("kind", "patch") == "patch" and side < 1:
      raise UserError(
        f"config.model.discriminator.n_layers={d_fields.get('n_layers', 3)} leaves no patch of "
        f"{h}x{w} images; use fewer layers"
      )
    discriminator = build_module(d_fields, "config.model.discriminator")
  return AutoencoderTask(
    model=build_module(fields),
    discriminator=discriminator,
    image_shape=(h, w, c),
    **opts,
  )
