"""The CLIP family: InfoNCE against NumPy, the temperature, `score`, and a short training run on
captioned digits that retrieves held-out captions and classifies digits zero-shot far above chance."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.clip import ClipModel
from research.tasks import clip
from tests.run_helpers import REPO, load_config


def _numpy_info_nce(img, txt, scale):
  logits = scale * img @ txt.T
  n = len(logits)
  row = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[i]))) for i in range(n)])
  col = -np.mean([logits[j, j] - np.log(np.sum(np.exp(logits[:, j]))) for j in range(n)])
  return (row + col) / 2


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(2, 6, 5))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  for scale in (1.0, 14.3, 100.0):
    loss, logits = clip.info_nce(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale))
    np.testing.assert_allclose(float(loss), _numpy_info_nce(img, txt, scale), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), scale * img @ txt.T, rtol=1e-5)
  # Asymmetric pairs: swapping the towers gives the same symmetric loss.
  a, _ = clip.info_nce(jnp.asarray(img), jnp.asarray(txt), 3.0)
  b, _ = clip.info_nce(jnp.asarray(txt), jnp.asarray(img), 3.0)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_temperature_and_score():
  model = ClipModel(
    vocab_size=40,
    text_length=6,
    embed_dim=8,
    image_channels=(4, 8),
    image_width=16,
    text_width=16,
    text_depth=1,
    text_heads=2,
  )
  task = clip.CLIPTask(model=model, text_length=6)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.integers(0, 256, (3, 16, 32, 1)), jnp.uint8)
  text = jnp.asarray(rng.integers(0, 40, (3, 6)), jnp.int32)
  variables = jax.jit(task.init)(jax.random.key(0), {"image": images})
  embed = jax.jit(task.embed)
  np.testing.assert_allclose(
    float(variables["model"]["params"]["log_scale"]), math.log(1 / 0.07), rtol=1e-6
  )
  img, txt, scale = embed(variables, images, text)
  np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(img), axis=1), 1.0, rtol=1e-5)
  score = jax.jit(task.score)(variables, images, text)
  assert score.shape == (3,) and score.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(score), np.sum(np.asarray(img * txt), 1) / 0.07, rtol=1e-4)
  big = jax.tree.map(lambda x: x, variables)
  big["model"]["params"]["log_scale"] = jnp.asarray(10.0)  # exp(10) > 100: clipped
  np.testing.assert_allclose(float(embed(big, images, text)[2]), 100.0)
  # The text feature is read at the last position, which (causally) sees every token: changing
  # the first token changes it.
  other = text.at[:, 0].set((text[:, 0] + 1) % 40)
  assert not np.allclose(np.asarray(embed(variables, images, other)[1]), np.asarray(txt))


@pytest.fixture(scope="module")
def no_cache_writes():
  """Keeps this module's 8-device executables out of the persistent compilation cache.

  With jax 0.10.2 on the fake 8-device CPU, the CLIP step *loaded from the persistent cache*
  deadlocks in XLA's in-process all-gather rendezvous (devices wait at different collectives,
  `rendezvous.cc` aborts after 40 s); compiled afresh it runs. Nothing is written while this is on.
  """
  old = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory, no_cache_writes):
  from research.eval import run as eval_run
  from research.train import loop

  config = load_config(os.path.join(REPO, "experiments", "clip_digits.py"), "runlocal")
  config.data.data_dir = data_dir
  config.batch_size = 64
  config.train.num_steps = 160
  config.train.log_every = 40
  config.train.checkpoint_every = 160
  config.train.async_checkpoint = False
  config.optim.model.learning_rate = 2e-3
  config.optim.model.warmup_steps = 20
  config.model.update(
    {
      "image_channels": (8, 16, 32),
      "image_width": 64,
      "text_width": 32,
      "text_depth": 1,
      "text_heads": 2,
      "embed_dim": 32,
    }
  )
  config.eval.batch_size = 256
  workdir = str(tmp_path_factory.mktemp("clip"))
  loop.train(config, workdir)
  return workdir, eval_run.run_eval(config, workdir)


@pytest.mark.slow
def test_short_training_run_retrieves_held_out_captions(trained):
  from research.data import captions

  _, results = trained
  labels = captions.split_canvases("test")["label"]
  _, counts = np.unique(labels, axis=0, return_counts=True)
  chance = float(np.sum((counts / counts.sum()) ** 2))  # a random pick has the same digits
  assert chance < 0.05
  assert results["num_examples"] == 2_000
  for key in ("i2t_label_top1", "t2i_label_top1"):
    assert results[key] > max(0.3, 8 * chance), (key, results)
  assert results["i2t_top1"] > 10 / 256  # exact pair among 256 candidates
  assert results["zero_shot_digit_acc"] > 0.5  # chance 0.1
  assert results["num_held_out"] > 400 and results["t2i_label_top1_held_out"] > 4 * chance


@pytest.mark.slow
def test_the_trained_model_loads_with_its_tokenizer(trained, data_dir):
  from research import data
  from research.train import sharding as shd
  from research.train.restore import load_trained

  workdir, _ = trained
  loaded = load_trained(workdir, task_name="clip")
  task, variables = loaded.task, loaded.variables
  assert isinstance(task, clip.CLIPTask)
  assert loaded.info.text_tokenizer == os.path.join(workdir, "text_tokenizer.json")
  config = load_config(os.path.join(REPO, "experiments", "clip_digits.py"), "runlocal")
  config.data.data_dir = data_dir
  config.data.text_tokenizer = os.path.join(workdir, "text_tokenizer.json")
  batch = next(
    iter(
      data.eval_iterator(
        config.data, global_batch_size=16, sharding=shd.batch_sharding(shd.make_mesh(-1, 1))
      )
    )
  )
  score = np.asarray(jax.jit(task.score)(variables, batch["image"], batch["text"]))
  shuffled = np.asarray(jax.jit(task.score)(variables, batch["image"], batch["text"][::-1]))
  assert score.shape == (16,) and np.isfinite(score).all()
  assert np.mean(score) > np.mean(shuffled) + 1.0  # trained: matching captions score higher


@pytest.mark.slow
@pytest.mark.parametrize("devices", [3, 6])
def test_the_reranker_loads_on_device_counts_its_training_batch_does_not_divide(trained, devices):
  """load_trained checks nothing against the run's training batch (256 here): a DALL-E job on 3
  or 6 devices loads its CLIP reranker (it used to fail on CLIP's batch size)."""
  import subprocess
  import sys

  from tests.run_helpers import subprocess_env

  workdir, _ = trained
  code = (
    "import jax; from research.train.restore import load_trained; "
    f"t = load_trained({workdir!r}, task_name='clip'); "
    "print(jax.device_count(), type(t.task).__name__, t.step)"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
    env=subprocess_env("", devices=devices),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(devices), "CLIPTask", "160"]


@pytest.mark.slow
def test_dalle_reranking_with_the_trained_clip_keeps_the_matching_canvas(trained):
  """The paper's reranking through `DalleTask.generate_images` and the trained CLIP: for each
  held-out caption, 8 candidate canvases (its own real canvas among 7 others) stand in for the
  sampler's draws; CLIP keeps one. The kept canvas shows the caption's digits far above chance."""
  import dataclasses

  from research.data import captions
  from research.tasks.dalle import DalleTask
  from research.text import TextTokenizer
  from research.train.restore import load_trained

  workdir, _ = trained
  loaded = load_trained(workdir, task_name="clip")
  clip_task, variables = loaded.task, loaded.variables
  test = captions.split_canvases("test")
  n, c = 32, 8
  rng = np.random.default_rng(0)
  # Candidate j of caption i: canvas i at a random slot, the rest drawn from the other canvases.
  bank = np.asarray(test["image"])  # [N, 32, 64, 1]
  slot = rng.integers(0, c, n)
  picks = rng.integers(n, len(bank), (n, c))
  picks[np.arange(n), slot] = np.arange(n)

  @dataclasses.dataclass(frozen=True)
  class BankTokens:  # "token" k decodes to canvas k of the bank
    grid_shape = (1, 1)

    def decode_tokens(self, variables, tokens):
      return jnp.asarray(bank)[tokens[:, 0, 0]]

  class BankSampler(DalleTask):
    def _generate(self, params, text, rng):  # [n*c, L] -> "tokens" [n*c, 1]
      return jnp.asarray(picks.reshape(-1, 1), jnp.int32)

  task = BankSampler(model=None, tokens=BankTokens(), rerank=(clip_task, variables), candidates=c)
  tokenizer = TextTokenizer.load(os.path.join(workdir, "text_tokenizer.json"))
  clip_text = jnp.asarray(tokenizer.encode(list(test["caption"][:n])))
  images, kept = task.generate_images({"model": {"params": {}}}, clip_text, None, clip_text)
  kept = np.asarray(kept)[:, 0]
  np.testing.assert_array_equal(np.asarray(images), bank[kept])
  labels = np.asarray(test["label"])
  same_digits = np.mean(np.all(labels[kept] == labels[:n], axis=1))
  chance = np.mean(np.all(labels[picks] == labels[:n, None], axis=2))  # a random candidate
  print(
    f"\nreranked: {same_digits:.2f} show the caption's digits (a random candidate: {chance:.2f})"
  )
  assert chance < 0.3 and same_digits > max(0.6, 2 * chance), (same_digits, chance)
