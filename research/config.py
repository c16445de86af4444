"""Shared config pieces for `experiments/*.py`.

An experiment file defines ``get_config(arg)`` returning a ConfigDict built on `base_config`. The
argument string after the file name (``experiments/x.py:runlocal,batch=32``) is parsed by
`parse_arg`; ``runlocal`` is the standard switch that shrinks any experiment to a minutes-long CPU run.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from research.errors import UserError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """``"runlocal,batch=32"`` -> ConfigDict(runlocal=True, batch=32) over `defaults`.

  Only names present in `defaults` are accepted; a bare name means True. Values are Python literals.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r}; this experiment takes {sorted(defaults)}")
    if not _:
      parsed: Any = True
    else:
      try:
        parsed = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        parsed = value
    out[key] = _convert(key, parsed, defaults[key])
  return out


def check_choice(key: str, value: Any, choices: Any) -> None:
  """A config argument that must be one of `choices`: a one-line error otherwise."""
  if value not in choices:
    raise UserError(f"config argument {key}={value!r}; use one of {sorted(choices)}")


def _convert(key: str, value: Any, default: Any) -> Any:
  if isinstance(default, bool):
    words = {"true": True, "1": True, "false": False, "0": False}
    if isinstance(value, bool):
      return value
    if str(value).lower() in words:
      return words[str(value).lower()]
    raise UserError(f"config argument {key}={value!r} is not a boolean; use {key}=true or false")
  if default is None:
    return value
  try:
    return type(default)(value)
  except (TypeError, ValueError):
    raise UserError(f"config argument {key}={value!r} is not a {type(default).__name__}") from None


def base_config() -> ml_collections.ConfigDict:
  """Fields every experiment has; experiments fill in task, model, data and optim."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global, over all devices of all processes
  c.task = ml_collections.ConfigDict({"name": ""})
  c.model = ml_collections.ConfigDict({"name": ""})
  c.data = ml_collections.ConfigDict(
    {
      "name": "",
      "split": "train",
      "eval_split": "test",
      "data_dir": ml_collections.FieldReference(None, field_type=str),
      "download": False,
      "shuffle_buffer": 10_000,
      "random_flip": False,
      "image_size": ml_collections.FieldReference(None, field_type=int),
      "jitter_size": 0,  # training: resize to this, random-crop image_size (pix2pix 286); 0 = off
      "prefetch": 2,
    }
  )
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "fsdp_min_size": 2**14})
  c.train = ml_collections.ConfigDict(
    {
      "num_steps": 10_000,
      "log_every": 100,
      "sample_every": 1_000,  # 0 = off
      "eval_every": 0,  # 0 = off
      "checkpoint_every": 1_000,
      "max_to_keep": 3,
      # Restore this step instead of the newest (0). Sample/eval read it; training goes back to
      # it and renames later steps <step>.superseded (research/train/setup.py).
      "restore_step": 0,
      "async_checkpoint": True,
      "ema_decay": 0.0,  # 0 = off; sampling/eval use EMA weights when on and sample.use_ema
      "grad_accum": 1,
      "part_steps": ml_collections.ConfigDict(),  # {part: updates per step}, default 1
      # True: a part updated n > 1 times per step gives update i its own 1/n of the batch (rows
      # i, i + n, ...), e.g. a WGAN critic's fresh real batch per iteration; False: all of it.
      "split_repeats": False,
      # Dense bf16 TFLOP/s per device for the MFU of the progress line; 0 = the known chip's
      # (research/train/accelerators.py), none on CPUs and unknown chips.
      "peak_tflops": 0.0,
    }
  )
  c.optim = ml_collections.ConfigDict()  # {part: {name, learning_rate, schedule, ...}}
  # Dataset-specific evaluators by name (research.registry.EVALUATORS): {name: {options}}, run by
  # --mode=eval and train.eval_every beside the task's held-out metrics.
  c.evals = ml_collections.ConfigDict()
  c.sample = ml_collections.ConfigDict({"num_samples": 64, "grid_size": 64, "use_ema": True})
  c.eval = ml_collections.ConfigDict(
    {
      "batch_size": 256,
      # Sample metrics (research/eval/sample_and_score.py): "" = the task's likelihood metrics
      # only; else a research.eval.feature_nets name ("digits_classifier", ...).
      "feature_net": "",
      "inception_weights": "",  # converted FID Inception .npz; "" = $RESEARCH_INCEPTION_WEIGHTS
      "inception_dtype": "float32",  # "bfloat16" on accelerators (research/models/inception.py)
      "num_samples": 1_000,  # scored by --mode=eval; FID is biased in N (eval.json has fid_n)
      "train_num_samples": 0,  # scored every train.eval_every steps (0 = num_samples)
      "sample_batch_size": 200,  # samples per jitted sample+features call, divisible by devices
      # The digits classifier (feature_net "digits_classifier"): a workdir, or "" = the shared
      # cache ($RESEARCH_DIGITS_CLASSIFIER, else ~/.cache/research/digits_classifier), one entry
      # per dataset below; a missing one is trained there once (experiments/digits_classifier.py).
      "classifier_workdir": "",
      "classifier_data": "offline_mnist",  # "offline_digits" for 8x8 experiments
      "classifier_steps": 400,  # training steps of an automatically trained classifier
      "reference_cache_dir": "",  # "" = $RESEARCH_REFERENCE_CACHE, else <workdir>/reference_stats
      "reference_split": "",  # real images of the reference statistics; "" = data.eval_split
      "reference_max_features": 10_000,  # real features kept for KID and precision/recall
      "kid_subsets": 100,
      "kid_subset_size": 1_000,  # capped at the smaller set
      "pr_k": 3,  # k-NN radius of precision/recall (Kynkaanniemi et al. 2019)
      "is_splits": 10,
      # Data-copying (research/eval/memorisation.py, Meehan et al. 2020): k-means cells of the
      # training features (0 = off), the fewest samples / held-out points a cell needs, the
      # training features kept (0 = reference_max_features), rows of nearest_neighbours.png.
      "memorisation_cells": 5,
      "memorisation_min_cell": 20,
      "memorisation_train_features": 0,
      "nearest_neighbours": 16,
    }
  )
  return c


def adam(learning_rate: float, **kw: Any) -> ml_collections.ConfigDict:
  """An optimizer entry for ``config.optim.<part>`` with every field present (so overrides work)."""
  fields = {
    "name": "adam",
    "learning_rate": learning_rate,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "grad_clip_norm": 0.0,
    "schedule": "constant",
    "warmup_steps": 0,
    "hold_steps": 0,
    "decay_steps": 0,
    "end_lr_factor": 0.0,
  }
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


def digits_diffusion_quick_start(c: ml_collections.ConfigDict, num_steps: int = 2_600) -> None:
  """The `:runlocal` recipe of the 28x28 digits diffusion configs (ddpm, flow, edm, meanflow).

  A UNet on 2x2 patches (14x14 and 7x7 levels, 48 / 96 channels, 1.5M parameters; about 170
  images/s on 2 CPU cores), `num_steps` steps of 32 (2,600: about 8 minutes here), Adam at 2e-3
  with 100 warm-up steps and a cosine decay to 5%, a short EMA (0.998).
  """
  c.batch_size = 32
  c.model.update(
    {
      "ch": 48,
      "ch_mult": (1, 2),
      "num_res_blocks": 1,
      "attn_resolutions": (),
      "dropout": 0.0,
      "num_groups": 8,
      "patch_size": 2,
    }
  )
  c.optim.model.update(
    {"learning_rate": 2e-3, "warmup_steps": 100, "schedule": "cosine", "end_lr_factor": 0.05}
  )
  quick_start_schedule(c, num_steps)


# Kynkäänniemi et al. 2024's guidance interval for EDM2 (sigma in (0.28, 5.42]).
GUIDANCE_INTERVAL = (0.28, 5.42)


def autoguide(
  c: ml_collections.ConfigDict,
  guide: str,
  weight: float,
  at: float = 0.75,
  interval: tuple[float, float] = GUIDANCE_INTERVAL,
) -> None:
  """Sample with autoguidance (Karras et al. 2024): the model guided by a weaker version of
  itself, the run in `guide` at `at` of this config's schedule (rounded down to a checkpoint),
  only at noise levels in `interval` (EDM's sigma).

  With `guide` the run's own workdir this is its earlier checkpoint (for sample and eval modes,
  once it is trained); `max_to_keep` grows so that the checkpoint is not deleted.
  """
  every = c.train.checkpoint_every
  step = max(every, int(c.train.num_steps * at) // every * every)
  c.sample.update(
    {
      "autoguidance": weight,
      "guide_workdir": guide,
      "guide_step": step,
      "guidance_interval": interval,
    }
  )
  c.train.max_to_keep = max(c.train.max_to_keep, (c.train.num_steps - step) // every + 1)


def quick_start_schedule(c: ml_collections.ConfigDict, num_steps: int) -> None:
  """A CPU quick start's run: `num_steps` steps, logs every 100, two sample grids, four
  checkpoints, a short EMA (0.998)."""
  c.train.update(
    {
      "num_steps": num_steps,
      "log_every": 100,
      "sample_every": num_steps // 2,
      "checkpoint_every": num_steps // 4,
      "ema_decay": 0.998,
    }
  )


def pix2pix_paper(
  dataset: str, *, eval_split: str, train_pairs: int, epochs: int, batch_size: int, num_eval: int
) -> ml_collections.ConfigDict:
  """pix2pix at 256x256 as the paper trains it (Isola et al. 2017; experiments/pix2pix_*.py).

  U-Net-256 (8 stages a side to a 1x1 bottleneck, C64-...-C512, dropout 0.5 in the three decoder
  blocks next to it, kept at test time), the 70x70 conditional PatchGAN, non-saturating cGAN +
  100 x L1 with D's loss halved, Adam 2e-4 betas (0.5, 0.999), BatchNorm (instance normalisation at
  batch 1, sec. 3.1), jitter (resize 286, random crop 256) and mirroring, `epochs` epochs: the
  first half at the base rate, then linear decay to 0. InceptionV3 FID of outputs vs targets.
  """
  c = base_config()
  c.batch_size = batch_size
  c.task = ml_collections.ConfigDict(
    {
      "name": "pix2pix",
      "loss": "non_saturating",
      "l1_weight": 100.0,
      "disc_loss_scale": 0.5,
      "conditional_disc": True,
      "test_bn": "batch",
    }
  )
  c.model.name = "pix2pix"  # a label; the networks are the two entries below
  c.model.dtype = "float32"
  c.model.generator = {
    "name": "pix2pix_unet",
    "features": 64,
    "max_features": 512,
    "num_downs": 8,
    "skips": True,
    "dropout": 0.5,
    "norm": "batch",
  }
  c.model.discriminator = {
    "name": "patch_discriminator",
    "features": 64,
    "n_layers": 3,
    "kind": "patch",
    "norm": "batch",
  }
  c.data.update(
    {
      "name": dataset,
      "split": "train",
      "eval_split": eval_split,
      "image_size": 256,
      "jitter_size": 286,
      "random_flip": True,
      "shuffle_buffer": min(train_pairs, 10_000),
    }
  )
  c.train.num_steps = epochs * train_pairs // batch_size
  for part in ("disc", "gen"):
    c.optim[part] = adam(
      2e-4, b1=0.5, b2=0.999, schedule="linear", hold_steps=c.train.num_steps // 2
    )
  every = max(c.train.num_steps // 50, 100)
  c.train.update({"log_every": 100, "sample_every": every, "checkpoint_every": every})
  c.train.ema_decay = 0.0  # the paper keeps no average of G
  c.sample.update({"num_samples": 16, "grid_size": 16, "use_ema": False})
  c.eval.update(
    {
      "batch_size": 8,
      "num_samples": num_eval,
      "sample_batch_size": 8,
      "feature_net": "inception_v3",
    }
  )
  return c
