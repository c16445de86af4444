"""DALL-E stage 2 (Ramesh et al. 2021) as a task: the text-and-image transformer on dVAE tokens.

- Image tokens come from a frozen stage-1 dVAE (``task.dvae_workdir``), encoded inside the loss with
  the argmax of its encoder logits. Its variables are a non-trainable collection of the "model" part
  (``image_tokenizer``): the shared step never differentiates or updates them, checkpoints hold them
  (a checkpoint is self-contained), and the initial state fetches them with a host callback instead
  of embedding them as jit constants. The dVAE loads through `research.train.restore.load_trained`
  (its saved config rebuilds the module). ``task.image_tokenizer=patches`` swaps in a
  parameter-free stand-in for smoke runs.
- Loss (section 2.2 / appendix B.1): next-token cross-entropy, the caption's and the image's each
  normalised by their own token count in the batch, weighted 1/8 and 7/8.
- Caption dropout for classifier-free guidance: with probability ``task.caption_dropout`` the caption
  is replaced by the all-padding caption (the per-position padding ids), which is also the
  unconditional branch of the sampler's super conditioning.
- Sampling (`research.tasks.dalle_sampling`): captions from ``sample.captions`` (or
  ``sample.captions_file``, one per line), temperature / top-k / nucleus, guidance, a KV cache; the
  dVAE decodes the tokens; with ``sample.rerank_workdir`` a CLIP model of the project (loaded
  through `research.train.restore.load_trained`) scores ``sample.candidates`` images per caption and
  keeps the best.
- Eval: held-out NLL of caption and image tokens (nats/token; image also bits per pixel). On
  captioned digits the ``caption_digits`` evaluator (`research.eval.caption_digits`) adds the share
  of generated digits a classifier reads as the caption asks, and their FID / KID.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from research import data
from research.data.captioned_digits import caption_label
from research.errors import UserError
from research.registry import TASKS, build_module
from research.tasks import dalle_sampling
from research.tasks.base import Batch, Metrics, ModelTask, Variables, masked_sums, options
from research.tasks.dalle_support import DVAETokens, PatchTokens, caption_strips
from research.text import TextTokenizer
from research.train.restore import load_trained

TOKENIZER = "image_tokenizer"  # the collection of the frozen image tokenizer's variables
TEXT_WEIGHT = 1.0 / 8.0  # Ramesh et al. 2021, appendix B.1: 1/8 text, 7/8 image


@dataclasses.dataclass(frozen=True)
class DalleTask(ModelTask):
  model: Any  # research.models.dalle.DalleTransformer
  tokens: Any  # PatchTokens | DVAETokens: encode_tokens / decode_tokens / vocab_size / grid_shape
  frozen: Any = None  # host (numpy) variables of the image tokenizer, or None
  text_weight: float = TEXT_WEIGHT
  caption_dropout: float = 0.0
  captions: tuple[str, ...] = ()  # sample captions
  caption_ids: Any = None  # int32 [C, L]
  sampling: dalle_sampling.SamplingConfig = dalle_sampling.SamplingConfig()
  per_caption: int = 8  # images per caption in the artifact
  rerank: Any = None  # (clip_task, clip_variables) or None
  clip_caption_ids: Any = None  # int32 [C, L']: the sample captions in CLIP's tokenizer
  # host: caption ids int [B, L] of this model -> int32 [B, L'] of the reranker's tokenizer
  to_clip_ids: Callable[[np.ndarray], np.ndarray] | None = None
  candidates: int = 1  # images drawn per kept image when reranking
  image_shape: tuple[int, int, int] = (32, 64, 1)  # the data's (H, W, C)

  # ---- helpers ----------------------------------------------------------------------------------
  @property
  def null_text(self) -> jax.Array:
    """The all-padding caption int32 [L]: the padding id of position i is text_vocab - L + i."""
    lt = self.model.text_length
    return jnp.arange(self.model.text_vocab - lt, self.model.text_vocab, dtype=jnp.int32)

  def image_tokens(self, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """uint8 images [B, H, W, C] -> int32 tokens [B, N] (argmax; no gradient)."""
    t = self.tokens.encode_tokens(variables.get(TOKENIZER, {}), images)
    return jax.lax.stop_gradient(t.reshape(t.shape[0], -1).astype(jnp.int32))

  def decode(self, variables: dict[str, Any], tokens: jax.Array) -> jax.Array:
    """int32 [B, N] -> uint8 images [B, H, W, C] through the tokenizer's decoder."""
    h, w = self.tokens.grid_shape
    return self.tokens.decode_tokens(variables.get(TOKENIZER, {}), tokens.reshape(-1, h, w))

  def nll_terms(self, variables: dict[str, Any], text: jax.Array, images: jax.Array) -> Metrics:
    """Per-token cross-entropies: caption [B, L] and image [B, N] (nats)."""
    tokens = self.image_tokens(variables, images)
    text_logits, image_logits = self.model.apply({"params": variables["params"]}, text, tokens)
    return {
      "text": _cross_entropy(text_logits, text),
      "image": _cross_entropy(image_logits, tokens),
    }

  # ---- the Task protocol -----------------------------------------------------------------------
  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    lt, n = self.model.text_length, self.model.layout.num_image
    text = jnp.zeros((1, lt), jnp.int32)
    params = self.model.init(rng, text, jnp.zeros((1, n), jnp.int32))["params"]
    out = {"params": params}
    if self.frozen:
      host = self.frozen
      shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), host)
      # A host callback, not closed-over constants: the jitted init stays small whatever the dVAE.
      out[TOKENIZER] = jax.pure_callback(lambda: host, shapes)
    return {"model": out}

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
    v = variables["model"]
    text = batch["text"].astype(jnp.int32)  # [B, L]
    metrics = {}
    if train and self.caption_dropout > 0:
      drop = jax.random.bernoulli(rng, self.caption_dropout, (text.shape[0],))  # [B]
      text = jnp.where(drop[:, None], self.null_text[None], text)
      metrics["caption_dropped"] = jnp.mean(drop.astype(jnp.float32))
    terms = self.nll_terms(v, text, batch["image"])
    # Each modality's cross-entropy normalised by its own token count in the batch (appendix B.1).
    text_loss, image_loss = jnp.mean(terms["text"]), jnp.mean(terms["image"])
    loss = self.text_weight * text_loss + (1.0 - self.text_weight) * image_loss
    metrics.update({"text_nll": text_loss, "image_nll": image_loss})
    return loss, metrics, {}

  def _generate(self, params: Any, text: jax.Array, rng: jax.Array) -> jax.Array:
    return dalle_sampling.generate(self.model, params, text, self.null_text, rng, self.sampling)

  def generate_images(
    self, variables: Variables, text: jax.Array, rng: jax.Array, clip_text: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Captions int32 [B, L] -> (uint8 images [B, H, W, C], tokens [B, N]).

    With a reranker and `clip_text` (the same captions in CLIP's tokenizer, [B, L']), draws
    `candidates` images per caption and keeps the one CLIP scores highest (the paper's reranking).
    """
    v = variables["model"]
    if not self.rerank or self.candidates <= 1 or clip_text is None:
      tokens = self._generate(v["params"], text, rng)
      return self.decode(v, tokens), tokens
    b, c = text.shape[0], self.candidates
    tokens = self._generate(v["params"], jnp.repeat(text, c, axis=0), rng)  # [B*c, N]
    images = self.decode(v, tokens)
    clip_task, clip_vars = self.rerank
    scores = clip_task.score(clip_vars, images, jnp.repeat(clip_text, c, axis=0)).reshape(b, c)
    best = jnp.argmax(scores, axis=1) + jnp.arange(b) * c  # [B]
    return images[best], tokens[best]

  def sample(self, variables: Variables, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    ids = jnp.asarray(self.caption_ids, jnp.int32)  # [C, L]
    which = jnp.arange(num) % ids.shape[0]  # [num]: sample i draws caption i mod C
    images, _ = self.generate_images(variables, ids[which], rng, self._clip_ids(which))
    labels = jnp.asarray([caption_label(c) for c in self.captions], jnp.int32)[which]  # [num, 2]
    return {"images": images, "labels": labels, "caption_index": which.astype(jnp.int32)}

  def _clip_ids(self, which: jax.Array) -> jax.Array | None:
    """The sample captions in the reranker's tokenizer, rows `which`, or None without one."""
    if self.clip_caption_ids is None:
      return None
    return jnp.asarray(self.clip_caption_ids, jnp.int32)[which]

  def artifacts(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """``captions.png``: each sample caption drawn above `per_caption` of its images."""
    c, k = len(self.captions), self.per_caption
    which = jnp.repeat(jnp.arange(c), k)  # [C*k]
    ids = jnp.asarray(self.caption_ids, jnp.int32)[which]  # [C*k, L]
    images, _ = self.generate_images(variables, ids, rng, self._clip_ids(which))
    _, h, w, ch = images.shape
    padded = jnp.pad(images, ((0, 0), (0, 2), (0, 2), (0, 0)), constant_values=255)
    rows = padded.reshape(c, k, h + 2, w + 2, ch).transpose(0, 2, 1, 3, 4)
    rows = rows.reshape(c, h + 2, k * (w + 2), ch)  # [C, h, row width, ch]
    strips = jnp.asarray(caption_strips(list(self.captions), k * (w + 2)))  # [C, sh, width, 1]
    strips = jnp.broadcast_to(strips, (*strips.shape[:3], ch))
    return {"captions.png": jnp.concatenate([strips, rows], axis=1).reshape(-1, k * (w + 2), ch)}

  # ---- evaluation ------------------------------------------------------------------------------
  def eval_sums(self, variables: Variables, batch: Batch, rng: jax.Array) -> Metrics:
    terms = self.nll_terms(variables["model"], batch["text"].astype(jnp.int32), batch["image"])
    per_example = {k: jnp.mean(v, axis=1) for k, v in terms.items()}  # [B] nats/token
    return masked_sums(per_example, batch["mask"])

  def eval_summary(self, totals: dict[str, np.ndarray]) -> dict[str, float]:
    n = float(totals["count"])
    text, image = float(totals["text"]) / n, float(totals["image"]) / n
    num_image = self.model.layout.num_image
    pixels = math.prod(self.image_shape)
    return {
      "text_nats_per_token": text,
      "image_nats_per_token": image,
      "image_bits_per_token": image / math.log(2),
      # The image tokens' NLL spread over the pixels (an upper-bound-like "bits/dim" of the
      # token model only: it leaves out the dVAE's reconstruction term).
      "image_token_bits_per_dim": image * num_image / (pixels * math.log(2)),
      "loss": self.text_weight * text + (1 - self.text_weight) * image,
      "num_examples": n,
    }


def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """float32 logits [..., V], int targets [...] -> -log softmax(logits)[target], [...]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _captions(sample_config: Any) -> list[str]:
  path = sample_config.get("captions_file", "")
  if path:
    if not epath.Path(path).exists():
      raise UserError(f"config.sample.captions_file {path} does not exist; give an existing file")
    return [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]
  return [str(c) for c in sample_config.get("captions", ())]


def _image_tokenizer(config: Any, info: data.DatasetInfo) -> tuple[Any, Any]:
  tc = config.task
  if tc.image_tokenizer == "patches":
    return PatchTokens(tuple(info.image_shape), tc.patch_size, tc.patch_levels), None
  if tc.image_tokenizer != "dvae":
    raise UserError(
      f"unknown config.task.image_tokenizer {tc.image_tokenizer!r}; use 'dvae' or 'patches'"
    )
  if not tc.dvae_workdir:
    raise UserError("task dalle needs a trained dVAE; set config.task.dvae_workdir")
  # The dVAE is fully convolutional: one trained on 28x28 digits also tokenizes 32x64 canvases.
  dvae = load_trained(tc.dvae_workdir, task_name="dvae", image_shape=tuple(info.image_shape))
  return DVAETokens(dvae.task), jax.device_get(dvae.variables)


def _reranker(workdir: str, tokenizer: TextTokenizer, captions: list[str]) -> dict[str, Any]:
  """The CLIP model of `workdir` and the sample captions in its tokenizer, for DalleTask."""
  clip = load_trained(workdir, task_name="clip")
  clip_tokenizer = clip.task.tokenizer

  def to_clip_ids(ids: np.ndarray) -> np.ndarray:
    return clip_tokenizer.encode(tokenizer.decode(ids))

  return {
    "rerank": (clip.task, jax.device_get(clip.variables)),
    "clip_caption_ids": clip_tokenizer.encode(captions),
    "to_clip_ids": to_clip_ids,
  }


# Config keys the factory reads itself (the image tokenizer), and the fields it computes.
_TOKENIZER_KEYS = ("image_tokenizer", "dvae_workdir", "patch_size", "patch_levels")
_COMPUTED = (
  "model",
  "tokens",
  "frozen",
  "captions",
  "caption_ids",
  "sampling",
  "rerank",
  "clip_caption_ids",
  "to_clip_ids",
  "image_shape",
)


@TASKS.register("dalle")
def make_dalle_task(config: Any, info: data.DatasetInfo) -> DalleTask:
  sc = config.sample
  opts = options(DalleTask, config.task, computed=(*_COMPUTED, *_TOKENIZER_KEYS))
  if not 0 <= opts.get("caption_dropout", 0.0) < 1:
    raise UserError(f"config.task.caption_dropout={opts['caption_dropout']} must be in [0, 1)")
  # per_caption and candidates are sampling settings: config.sample.
  opts.update(options(DalleTask, sc, computed=_COMPUTED, strict=False))
  tokens, frozen = _image_tokenizer(config, info)
  if not info.text_tokenizer:
    raise UserError("task dalle needs captions; set config.data.text_length (e.g. 24)")
  tokenizer = TextTokenizer.load(info.text_tokenizer)
  fields = {
    **config.model.to_dict(),
    "text_vocab": tokenizer.vocab_size,
    "text_length": tokenizer.text_length,
    "image_vocab": tokens.vocab_size,
    "grid": tuple(tokens.grid_shape),
  }
  captions = _captions(sc)
  if not captions:
    raise UserError("no sample captions; set config.sample.captions or config.sample.captions_file")
  rerank = _reranker(sc.rerank_workdir, tokenizer, captions) if sc.get("rerank_workdir") else {}
  sampling = dalle_sampling.SamplingConfig(
    **options(dalle_sampling.SamplingConfig, sc, strict=False)
  )
  return DalleTask(
    model=build_module(fields),
    tokens=tokens,
    frozen=frozen,
    captions=tuple(captions),
    caption_ids=tokenizer.encode(captions),
    sampling=sampling,
    image_shape=tuple(info.image_shape),
    **rerank,
    **opts,
  )
