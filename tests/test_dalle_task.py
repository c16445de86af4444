"""The DALL-E task: loss weighting by hand, KV-cached sampling == recomputation, FSDP == DP, learning."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.errors import UserError
from research.eval.caption_digits import CaptionDigits, Options
from research.eval.heldout import HeldOut
from research.tasks import dalle_sampling
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.step import StepConfig, make_train_step
from tests.dalle_helpers import IMAGE_SHAPE, make_task, synthetic_batches


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_weights_text_and_image_by_their_own_counts():
  task = make_task()
  batch = synthetic_batches(1, batch=4)[0]
  v = jax.jit(task.init)(jax.random.key(0), batch)["model"]
  loss_fn = jax.jit(lambda v, b, k: task.loss("model", {"model": v}, b, k, train=False, step=0))
  loss, metrics, _ = loss_fn(v, batch, jax.random.key(1))
  # By hand: per-token cross-entropies from the model's logits and the patch tokens.
  img = batch["image"].astype(np.float64).reshape(4, 4, 4, 4, 4, 1).mean((2, 4, 5))
  tokens = np.clip(np.floor(img / 256 * 8), 0, 7).astype(int).reshape(4, 16)
  tl, il = jax.jit(task.model.apply)({"params": v["params"]}, batch["text"], tokens)
  tl, il = np.asarray(tl, np.float64), np.asarray(il, np.float64)
  text_ce = -np.take_along_axis(_log_softmax(tl), batch["text"][..., None], -1)  # [4, 4, 1]
  image_ce = -np.take_along_axis(_log_softmax(il), tokens[..., None], -1)  # [4, 16, 1]
  text_mean = text_ce.sum() / text_ce.size  # normalised by the 16 caption tokens
  image_mean = image_ce.sum() / image_ce.size  # by the 64 image tokens
  expected = text_mean / 8 + 7 * image_mean / 8
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["text_nll"]), text_mean, rtol=1e-5)
  # The weighting matters here: one pooled mean over all 80 tokens would differ.
  pooled = (text_ce.sum() + image_ce.sum()) / (text_ce.size + image_ce.size)
  assert abs(pooled - expected) > 100 * 1e-5 * expected


def test_caption_dropout_uses_the_all_padding_caption():
  task = make_task(caption_dropout=0.5)
  np.testing.assert_array_equal(task.null_text, [12, 13, 14, 15])
  batch = synthetic_batches(1, batch=64)[0]
  v = jax.jit(task.init)(jax.random.key(0), batch)
  _, m, _ = jax.jit(lambda v, b, k: task.loss("model", v, b, k, train=True, step=0))(
    v, batch, jax.random.key(3)
  )
  assert 0.3 < float(m["caption_dropped"]) < 0.7


@pytest.mark.parametrize(
  "cfg",
  [
    dalle_sampling.SamplingConfig(temperature=0.0),
    dalle_sampling.SamplingConfig(temperature=1.0, top_k=5),
    dalle_sampling.SamplingConfig(temperature=0.8, top_p=0.9, guidance_scale=3.0),
  ],
)
def test_kv_cached_sampling_equals_full_recomputation(cfg):
  task = make_task(depth=3, sampling=cfg)
  v = jax.jit(task.init)(jax.random.key(0), {})["model"]
  text = jnp.asarray(task.caption_ids)
  key = jax.random.key(7)
  cached = jax.jit(lambda p, t, k: task._generate(p, t, k))(v["params"], text, key)
  full = dalle_sampling.generate_without_cache(
    task.model, v["params"], text, task.null_text, key, cfg
  )
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
  assert cached.shape == (2, 16) and np.unique(np.asarray(cached)).size > 1


def test_reranking_keeps_the_candidate_the_scorer_prefers():
  """Reranking draws `candidates` images per caption from one sampler call and keeps, per caption,
  the one the CLIP stand-in scores highest (here: the brightest, if the caption id is odd)."""

  class BrightnessScorer:
    @staticmethod
    def score(variables, images, text):  # [B*c, H, W, C], [B*c, L'] -> [B*c]
      sign = jnp.where(text[:, 0] % 2 == 1, 1.0, -1.0)
      return sign * jnp.mean(images.astype(jnp.float32), axis=(1, 2, 3)) * variables["gain"]

  c = 4
  task = make_task(
    rerank=(BrightnessScorer, {"gain": jnp.float32(1.0)}),
    candidates=c,
    sampling=dalle_sampling.SamplingConfig(temperature=1.0),
  )
  v = jax.jit(task.init)(jax.random.key(0), {})
  text = jnp.asarray(task.caption_ids)  # [2, L]
  clip_text = jnp.array([[1, 0], [2, 0]], jnp.int32)  # caption 0: brightest; 1: darkest
  key = jax.random.key(11)
  images, tokens = jax.jit(task.generate_images)(v, text, key, clip_text)
  assert images.shape == (2, *IMAGE_SHAPE) and tokens.shape == (2, 16)
  # All candidates, as reranking drew them: caption i's are rows i*c .. i*c + c - 1.
  every = task._generate(v["model"]["params"], jnp.repeat(text, c, axis=0), key)
  brightness = np.asarray(task.decode(v["model"], every), np.float64).mean((1, 2, 3))
  brightness = brightness.reshape(2, c)
  assert np.ptp(brightness[0]) > 0 and np.ptp(brightness[1]) > 0  # a real choice was made
  want = [np.argmax(brightness[0]), c + np.argmin(brightness[1])]
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(every)[want])
  # Without CLIP ids (or with one candidate) there is no reranking: one draw per caption.
  plain, _ = jax.jit(task.generate_images)(v, text, key)
  assert plain.shape == (2, *IMAGE_SHAPE)

  # Eval reranks too: each held-out batch's captions go through `to_clip_ids` on the host.
  seen = []

  def to_clip_ids(ids):
    seen.append(np.asarray(ids))
    return np.stack([ids[:, 0], ids[:, 1]], axis=1).astype(np.int32)

  class Classifier:
    params, input_size = None, IMAGE_SHAPE[0]

    @staticmethod
    def apply(params, images):
      x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
      return {"logits": x[:, :10], "features": x[:, :3]}

  ranked = dataclasses.replace(task, to_clip_ids=to_clip_ids)
  held_out = [dict(b, mask=np.ones(16, np.float32)) for b in synthetic_batches(2, seed=5)]
  evaluator = CaptionDigits(ranked, Options(judge="stand-in", num_captions=200), lambda: Classifier)
  out = evaluator(v, lambda: iter(held_out), jax.random.key(1))
  assert out["agreement_cells"] == 32  # 200 captions asked for: both batches kept
  np.testing.assert_array_equal(np.concatenate(seen), np.concatenate([b["text"] for b in held_out]))


def test_filter_logits_top_k_and_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  top2 = dalle_sampling.filter_logits(logits, dalle_sampling.SamplingConfig(top_k=2))
  np.testing.assert_array_equal(np.isfinite(top2[0]), [True, True, False, False])
  # Nucleus 0.7: 0.5 < 0.7, 0.5 + 0.25 >= 0.7, so the two most likely tokens stay.
  nuc = dalle_sampling.filter_logits(logits, dalle_sampling.SamplingConfig(top_p=0.7))
  np.testing.assert_array_equal(np.isfinite(nuc[0]), [True, True, False, False])
  nuc = dalle_sampling.filter_logits(logits, dalle_sampling.SamplingConfig(top_p=0.8))
  np.testing.assert_array_equal(np.isfinite(nuc[0]), [True, True, True, False])


def _run(task, mesh, batches, lr=0.05):
  opts = {"model": optax.sgd(lr)}
  make = state_lib.state_factory(task, opts, IMAGE_SHAPE, True, 0, False)
  state, shardings = state_lib.init_sharded(make, mesh, fsdp_min_size=1)
  bs = shd.batch_sharding(mesh)
  step = jax.jit(
    make_train_step(task, opts, StepConfig(), mesh),
    donate_argnums=0,
    in_shardings=(shardings, bs),
    out_shardings=(shardings, shd.replicated(mesh)),
  )
  metrics = []
  for b in batches:
    state, m = step(state, jax.device_put(b, bs))
    metrics.append(jax.block_until_ready(m))
  return state, metrics, shardings


def test_fsdp_step_equals_data_parallel_step():
  task = make_task(caption_dropout=0.25)
  batches = synthetic_batches(2)
  dp, dp_m, _ = _run(task, shd.make_mesh(data=8, fsdp=1), batches)
  fsdp, fsdp_m, shardings = _run(task, shd.make_mesh(data=1, fsdp=8), batches)
  # FSDP really splits the transformer's parameters.
  specs = [s.spec for s in jax.tree.leaves(shardings.parts["model"].params)]
  assert any("fsdp" in tuple(s) for s in specs)
  np.testing.assert_allclose(
    [m["model/loss"] for m in dp_m], [m["model/loss"] for m in fsdp_m], rtol=1e-5
  )
  chex.assert_trees_all_close(
    jax.device_get(dp.parts["model"].params),
    jax.device_get(fsdp.parts["model"].params),
    rtol=1e-4,
    atol=1e-6,
  )
  # The frozen tokenizer variables ride along in the state, untouched by the step.
  table = jax.device_get(fsdp.parts["model"].collections["image_tokenizer"]["table"])
  np.testing.assert_array_equal(table, (np.arange(8) + 0.5) * 32.0)


def test_short_training_run_lowers_held_out_nll():
  task = make_task(depth=2, width=48)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  held_out = [dict(b, mask=np.ones(16, np.float32)) for b in synthetic_batches(2, seed=99)]
  opts = {"model": optax.adam(3e-3)}
  make = state_lib.state_factory(task, opts, IMAGE_SHAPE, True, 0, False)
  state, shardings = state_lib.init_sharded(make, mesh, fsdp_min_size=1)
  held_out_metrics = HeldOut(task)
  before = held_out_metrics(state.variables(), held_out, jax.random.key(0))
  step = jax.jit(make_train_step(task, opts, StepConfig(), mesh), donate_argnums=0)
  for b in synthetic_batches(150, seed=1):
    state, _ = step(state, b)
  after = held_out_metrics(state.variables(), held_out, jax.random.key(0))
  assert after["image_nats_per_token"] < 0.6 * before["image_nats_per_token"]
  assert after["text_nats_per_token"] < 0.6 * before["text_nats_per_token"]
  assert before["num_examples"] == 32
  # Sampling after training: the caption's class shows in the generated stripes' tokens.
  out = jax.jit(lambda v, r: task.sample(v, r, 4))(state.variables(), jax.random.key(1))
  assert out["images"].shape == (4, *IMAGE_SHAPE) and out["images"].dtype == jnp.uint8
  np.testing.assert_array_equal(out["labels"], [[1, -1], [2, -1], [1, -1], [2, -1]])
  pictures = jax.jit(task.artifacts)(state.variables(), held_out[0], jax.random.key(2))
  png = pictures["captions.png"]
  assert png.ndim == 3 and png.shape[1] == 2 * (16 + 2) and png.shape[0] > 2 * 18


def test_caption_digit_agreement_and_fid_bookkeeping():
  seen = []

  class AlwaysOne:
    params = None
    input_size = IMAGE_SHAPE[0] - 2  # smaller than a cell: the classifier sees the centre crop

    @staticmethod
    def apply(params, images):
      seen.append(images.shape[1:3])
      x = images.astype(jnp.float32) / 255.0
      features = jnp.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, 0, 0, 0]], axis=1)
      return {"logits": jnp.tile(jax.nn.one_hot(1, 10), (images.shape[0], 1)), "features": features}

  task = make_task()
  evaluator = CaptionDigits(task, Options(judge="stand-in", num_captions=32), lambda: AlwaysOne)
  held_out = [dict(b, mask=np.ones(16, np.float32)) for b in synthetic_batches(3, seed=5)]
  v = jax.jit(task.init)(jax.random.key(0), {})
  out = evaluator(v, lambda: iter(held_out), jax.random.key(1))
  labels = np.concatenate([b["label"][:, 0] for b in held_out[:2]])  # the first 32 captions
  assert out["agreement_cells"] == 32 and out["fid_n"] == 32
  np.testing.assert_allclose(out["caption_digit_agreement"], np.mean(labels == 1))
  np.testing.assert_allclose(out["real_digit_agreement"], np.mean(labels == 1))
  assert set(seen) == {(IMAGE_SHAPE[0] - 2, IMAGE_SHAPE[0] - 2)}

  # FID by hand from the same features: generated cells (same rng per batch) vs the real cells.
  def feats(images):
    return np.asarray(AlwaysOne.apply(None, jnp.asarray(images)[:, 1:-1, 1:-1])["features"])

  gen = [
    task.generate_images(v, b["text"], jax.random.fold_in(jax.random.key(1), i))[0]
    for i, b in enumerate(held_out[:2])
  ]
  f_gen = np.concatenate([feats(g) for g in gen]).astype(np.float64)
  f_real = np.concatenate([feats(b["image"]) for b in held_out[:2]]).astype(np.float64)
  import scipy.linalg

  m1, m2 = f_real.mean(0), f_gen.mean(0)
  s1, s2 = np.cov(f_real, rowvar=False), np.cov(f_gen, rowvar=False)
  root = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * root)
  np.testing.assert_allclose(out["fid"], expected, rtol=1e-3, atol=1e-6)
  assert out["fid"] > 1e-3 and np.isfinite(out["kid"])

  # A "generator" that returns the real canvases of the captions: FID 0, the real agreement.
  reals = iter([b["image"] for b in held_out[:2]])
  evaluator.generate = lambda v, text, rng, clip_text: (next(reals), None)
  copy = evaluator(v, lambda: iter(held_out), jax.random.key(1))
  assert abs(copy["fid"]) < 1e-6, copy
  assert copy["caption_digit_agreement"] == copy["real_digit_agreement"]

  def missing():
    raise UserError("no digits classifier; train one")

  assert (
    CaptionDigits(task, Options(judge="absent"), missing)(v, lambda: iter(held_out), None) == {}
  )
  assert CaptionDigits(task, Options(judge=""), missing)(v, lambda: iter(held_out), None) == {}
