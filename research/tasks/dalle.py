"""DALL-E stage 2 (Ramesh et al. 2021) as a task: the text-and-image transformer on dVAE tokens.

- Image tokens come from a frozen stage-1 dVAE (``task.dvae_workdir``), encoded inside the loss with
  the argmax of its encoder logits. Its variables are a non-trainable collection of the "model" part
  (``image_tokenizer``): the shared step never differentiates or updates them, checkpoints hold them
  (a checkpoint is self-contained), and the initial state fetches them with a host callback instead
  of embedding them as jit constants. (The dVAE's config is still read from its workdir to build the
  module.) ``task.image_tokenizer=patches`` swaps in a parameter-free stand-in for smoke runs.
- Loss (section 2.2 / appendix B.1): next-token cross-entropy, the caption's and the image's each
  normalised by their own token count in the batch, weighted 1/8 and 7/8.
- Caption dropout for classifier-free guidance: with probability ``task.caption_dropout`` the caption
  is replaced by the all-padding caption (the per-position padding ids), which is also the
  unconditional branch of the sampler's super conditioning.
- Sampling (`research.tasks.dalle_sampling`): captions from ``sample.captions`` (or
  ``sample.captions_file``, one per line), temperature / top-k / nucleus, guidance, a KV cache; the
  dVAE decodes the tokens; with ``sample.rerank_workdir`` a CLIP model of the project
  (`research.tasks.clip.load_clip`) scores ``sample.candidates`` images per caption and keeps the best.
- Eval: held-out NLL of caption and image tokens (nats/token; image also bits per pixel), and, with
  ``task.classifier`` (a `research.eval.feature_nets` name, e.g. digits_classifier), the fraction of
  digits a classifier reads in generated canvases that agree with what the caption asks for, and
  the FID / KID of the generated digits against the real ones of the same held-out captions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import data
from research.errors import UserError
from research.eval import averages
from research.registry import TASKS, build_module
from research.tasks import dalle_sampling
from research.tasks.base import Batch, Metrics, Variables
from research.tasks.dalle_support import DVAETokens, PatchTokens, caption_label, caption_strips

TOKENIZER = "image_tokenizer"  # the collection of the frozen image tokenizer's variables
TEXT_WEIGHT = 1.0 / 8.0  # Ramesh et al. 2021, appendix B.1: 1/8 text, 7/8 image


@dataclasses.dataclass(frozen=True)
class DalleTask:
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
  classifier: Callable[[], Any] | None = None  # loads a FeatureNet for caption-digit agreement
  agreement_samples: int = 200
  image_shape: tuple[int, int, int] = (32, 64, 1)  # the data's (H, W, C)
  parts: tuple[str, ...] = ("model",)

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
    step: jax.Array | None = None,
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
  def _batch_sums(self, variables: Variables, batch: Batch) -> Metrics:
    terms = self.nll_terms(variables["model"], batch["text"].astype(jnp.int32), batch["image"])
    per_example = {k: jnp.mean(v, axis=1) for k, v in terms.items()}  # [B] nats/token
    return averages.masked_sums(per_example, batch["mask"])

  @functools.cached_property
  def _eval_sums(self):
    return jax.jit(self._batch_sums)  # compiled once per task, not once per evaluation

  @functools.cached_property
  def _judge(self) -> tuple[Any, Callable[..., Any]]:
    """The classifier and its jitted apply, loaded once per task (every `train.eval_every`
    evaluation reuses them); a failed load raises again next time (nothing is cached)."""
    net = self.classifier()
    return net, jax.jit(net.apply)

  @functools.cached_property
  def _generate_jit(self):
    return jax.jit(self.generate_images)

  def evaluate(
    self, variables: Variables, batches: Iterator[Batch], rng: jax.Array
  ) -> dict[str, float]:
    kept: list[Batch] = []
    want = self.agreement_samples if self.classifier else 0

    def sums(batch: Batch, index: int) -> Metrics:
      if sum(int(b["text"].shape[0]) for b in kept) < want:
        kept.append(batch)
      return self._eval_sums(variables, batch)

    means, n = averages.split_means(sums, batches)
    num_image = self.model.layout.num_image
    pixels = math.prod(self.image_shape)
    results = {
      "text_nats_per_token": means["text"],
      "image_nats_per_token": means["image"],
      "image_bits_per_token": means["image"] / math.log(2),
      # The image tokens' NLL spread over the pixels (an upper-bound-like "bits/dim" of the
      # token model only: it leaves out the dVAE's reconstruction term).
      "image_token_bits_per_dim": means["image"] * num_image / (pixels * math.log(2)),
      "loss": self.text_weight * means["text"] + (1 - self.text_weight) * means["image"],
      "num_examples": n,
    }
    if kept:
      results.update(self._caption_metrics(variables, kept, rng))
    return results

  def _caption_metrics(
    self, variables: Variables, kept: list[Batch], rng: jax.Array
  ) -> dict[str, float]:
    """Generated canvases for held-out captions against the real canvases of the same captions.

    Each square cell the caption fills (cells it leaves empty are skipped) is classified and
    embedded by the classifier, for the generated and the real canvas alike:
    ``caption_digit_agreement`` is the share of generated cells read as the digit the caption asks
    for (``real_digit_agreement``, the same for the real cells, is its ceiling); ``fid`` and
    ``kid`` compare the generated cells with the real ones in the classifier's feature space
    (`research.eval.metrics`), over ``fid_n`` cells of each (FID is biased upwards at small N).
    With a reranker (``sample.rerank_workdir``) the generated canvases are the reranked ones, as in
    sample mode: the held-out captions are re-tokenized for CLIP on the host.
    """
    from research.eval import metrics  # pylint: disable=g-import-not-at-top

    try:
      net, apply = self._judge
    except UserError as e:  # no trained classifier: skip, say why
      print(f"note: caption-digit agreement skipped: {e}", file=sys.stderr)
      return {}
    hits = {"generated": 0, "real": 0}
    feats: dict[str, list[np.ndarray]] = {"generated": [], "real": []}
    for i, batch in enumerate(kept):
      clip_text = None  # held-out captions in the reranker's tokenizer, when there is one
      if self.to_clip_ids is not None:
        clip_text = self.to_clip_ids(np.asarray(jax.device_get(batch["text"])))
      key = jax.random.fold_in(rng, i)
      generated, _ = self._generate_jit(variables, batch["text"], key, clip_text)
      canvases = {"generated": np.asarray(generated), "real": np.asarray(batch["image"])}
      labels = np.asarray(batch["label"]).reshape(len(generated), -1)
      mask = np.asarray(batch["mask"]) > 0
      size = canvases["real"].shape[1]  # square cells side by side: W // H of them
      for cell in range(min(labels.shape[1], canvases["real"].shape[2] // size)):
        ok = mask & (labels[:, cell] >= 0)
        for kind, images in canvases.items():
          crop = _fit(images[:, :, cell * size : (cell + 1) * size], net.input_size)
          out = jax.device_get(apply(net.params, crop))
          pred = np.argmax(out["logits"], axis=-1)
          hits[kind] += int(np.sum((pred == labels[:, cell]) & ok))
          feats[kind].append(np.asarray(out["features"], np.float64)[ok])
    gen, real = (np.concatenate(feats[k]) for k in ("generated", "real"))
    total = len(gen)
    results = {
      "caption_digit_agreement": hits["generated"] / max(total, 1),
      "real_digit_agreement": hits["real"] / max(total, 1),
      "agreement_cells": float(total),
    }
    if total >= 2:
      fid = metrics.frechet_distance(*metrics.gaussian_stats(real), *metrics.gaussian_stats(gen))
      kid_mean, kid_std = metrics.kid(real, gen, num_subsets=20, subset_size=max(2, total // 2))
      results.update({"fid": fid, "fid_n": float(total), "kid": kid_mean, "kid_std": kid_std})
    return results


# A captioned-digits cell is a 28x28 digit padded by 2 on each side (research/data/captions.py,
# CELL = 32; not imported: it pulls in TFDS): the digit is the centre 7/8 of a cell at any size.
DIGIT_FRACTION = 28 / 32


def _fit(cells: np.ndarray, side: int) -> np.ndarray:
  """uint8 cells [B, S, S, C] -> [B, side, side, C] for the classifier: the digit's box (the centre
  DIGIT_FRACTION of the cell), resized (bilinear, antialiased) only when it is not `side` already."""
  s = cells.shape[1]
  d = max(1, round(s * DIGIT_FRACTION))
  o = (s - d) // 2
  digits = cells[:, o : o + d, o : o + d]
  if d == side:
    return digits
  resized = jax.image.resize(
    digits.astype(np.float32), (len(cells), side, side, cells.shape[-1]), "bilinear"
  )
  return np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)


def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """float32 logits [..., V], int targets [...] -> -log softmax(logits)[target], [...]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _captions(sample_config: Any) -> list[str]:
  path = sample_config.get("captions_file", "")
  if path:
    from etils import epath  # pylint: disable=g-import-not-at-top

    if not epath.Path(path).exists():
      raise UserError(f"config.sample.captions_file {path} does not exist; give an existing file")
    return [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]
  return [str(c) for c in sample_config.get("captions", ())]


def _text_tokenizer(config: Any) -> Any:
  from research.text import TextTokenizer  # pylint: disable=g-import-not-at-top

  path = config.data.get("text_tokenizer", "")
  if not path:
    raise UserError("task dalle needs a caption tokenizer; set config.data.text_tokenizer")
  return TextTokenizer.load(path)


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
  from research import tokenize  # pylint: disable=g-import-not-at-top

  # The dVAE is fully convolutional: one trained on 28x28 digits also tokenizes 32x64 canvases.
  dvae_task, dvae_vars = tokenize.load_dvae(tc.dvae_workdir, image_shape=tuple(info.image_shape))
  return DVAETokens(dvae_task), jax.device_get(dvae_vars)


@TASKS.register("dalle")
def make_dalle_task(config: Any, info: data.DatasetInfo) -> DalleTask:
  tc, sc = config.task, config.sample
  tokens, frozen = _image_tokenizer(config, info)
  tokenizer = _text_tokenizer(config)
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
  rerank = clip_ids = to_clip_ids = None
  if sc.get("rerank_workdir", ""):
    from etils import epath  # pylint: disable=g-import-not-at-top

    from research.tasks import clip  # pylint: disable=g-import-not-at-top
    from research.text import TextTokenizer  # pylint: disable=g-import-not-at-top

    clip_task, clip_vars = clip.load_clip(sc.rerank_workdir)
    rerank = (clip_task, jax.device_get(clip_vars))
    path = epath.Path(sc.rerank_workdir) / "text_tokenizer.json"
    clip_tokenizer = TextTokenizer.load(path)
    clip_ids = clip_tokenizer.encode(captions)

    def to_clip_ids(ids: np.ndarray) -> np.ndarray:
      return clip_tokenizer.encode(tokenizer.decode(ids))

  classifier = None
  if tc.get("classifier", ""):
    from research.eval import feature_nets  # pylint: disable=g-import-not-at-top

    name, eval_config = tc.classifier, config.eval

    def classifier() -> Any:  # loaded at eval time; a missing one skips the agreement metric
      return feature_nets.FEATURE_NETS.get(name)(eval_config)

  if not 0 <= tc.caption_dropout < 1:
    raise UserError(f"config.task.caption_dropout={tc.caption_dropout} must be in [0, 1)")
  return DalleTask(
    model=build_module(fields),
    tokens=tokens,
    frozen=frozen,
    caption_dropout=tc.caption_dropout,
    captions=tuple(captions),
    caption_ids=tokenizer.encode(captions),
    sampling=dalle_sampling.SamplingConfig(
      temperature=sc.temperature,
      top_k=sc.top_k,
      top_p=sc.top_p,
      guidance_scale=sc.guidance_scale,
    ),
    per_caption=sc.per_caption,
    rerank=rerank,
    clip_caption_ids=clip_ids,
    to_clip_ids=to_clip_ids,
    candidates=sc.get("candidates", 1),
    classifier=classifier,
    agreement_samples=tc.agreement_samples,
    image_shape=tuple(info.image_shape),
  )
