"""Unpaired image-to-image data (CycleGAN): two splits of one dataset read side by side.

With config.data.unpaired_split (training) and config.data.unpaired_eval_split (evaluation) set,
the main splits (config.data.split, eval_split) supply domain A and the unpaired ones domain B,
e.g. ``name='cycle_gan/horse2zebra', split='trainA', unpaired_split='trainB',
eval_split='testA', unpaired_eval_split='testB'``. Batches carry A's images as 'input' and B's as
'image' (each split's 'image' feature; other features and 'label', which in cycle_gan only names
the domain, are dropped).

Training zips two streams of `tf_pipeline.train_dataset`, one batch of each per step. Each is the
usual deterministic stream of its split: A's keyed by the run's seed, B's by a seed derived from
it (`b_seed`), so the two have their own shuffles, flips and crops; resuming at step k skips k
batches of each, so both resume exactly. Evaluation pads both eval splits to the same number of
batches, the larger one's, with 'mask' for the B rows ('image') and 'input_mask' for the A rows
('input').
"""

from __future__ import annotations

from typing import Any

from research.data import tf_pipeline, tfds_source
from research.errors import UserError

_IMAGE_ONLY = ("image",)


def splits(data_config: Any) -> tuple[str, str] | None:
  """(unpaired_split, unpaired_eval_split) when unpaired mode is on, else None.

  Both must be set together; a one-line `UserError` otherwise.
  """
  train = tfds_source.field(data_config, "unpaired_split")
  evaluation = tfds_source.field(data_config, "unpaired_eval_split")
  if not train and not evaluation:
    return None
  if not train or not evaluation:
    missing = "unpaired_split" if not train else "unpaired_eval_split"
    raise UserError(
      f"config.data.{missing} is not set but its unpaired partner is; set both (domain B's train "
      "and eval splits, e.g. 'trainB' and 'testB') or neither"
    )
  if tfds_source.field(data_config, "text_length"):
    raise UserError(
      "config.data.text_length reads captions, which unpaired data (config.data.unpaired_split) "
      "does not have; set text_length=0 or unset unpaired_split"
    )
  return str(train), str(evaluation)


def b_seed(seed: int) -> int:
  """The seed of domain B's stream, derived from the run's `seed` (A's stream uses `seed`)."""
  return tf_pipeline._key("unpaired", seed)


def train_dataset(builder: Any, split_a: Any, split_b: Any, *, seed: int, **kwargs: Any) -> Any:
  """{'input': A images, 'image': B images} local batches: two `tf_pipeline.train_dataset`s zipped.

  `split_a`, `split_b` are this process's parts; `kwargs` go to both streams.
  """
  tf = tfds_source.import_tf()
  common = {**kwargs, "images": _IMAGE_ONLY, "labels": False, "text": None}
  a = tf_pipeline.train_dataset(builder, split_a, seed=seed, **common)
  b = tf_pipeline.train_dataset(builder, split_b, seed=b_seed(seed), **common)
  ds = tf.data.Dataset.zip((a, b)).map(lambda x, y: {"input": x["image"], "image": y["image"]})
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_num_batches(
  builder: Any, split_a: Any, split_b: Any, *, local_batch: int, process_count: int
) -> int:
  """Batches of an unpaired eval pass: the larger of the two splits' counts."""
  return max(
    tf_pipeline.eval_num_batches(
      builder, split_a, local_batch=local_batch, process_count=process_count
    ),
    tf_pipeline.eval_num_batches(
      builder,
      split_b,
      local_batch=local_batch,
      process_count=process_count,
      key="config.data.unpaired_eval_split",
    ),
  )


def eval_dataset(builder: Any, split_a: Any, split_b: Any, **kwargs: Any) -> Any:
  """One padded pass: {'input', 'input_mask' (A rows), 'image', 'mask' (B rows)} local batches."""
  tf = tfds_source.import_tf()
  common = {**kwargs, "images": _IMAGE_ONLY, "labels": False, "text": None}
  a = tf_pipeline.eval_dataset(builder, split_a, **common)
  b = tf_pipeline.eval_dataset(builder, split_b, key="config.data.unpaired_eval_split", **common)

  def merge(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    return {"input": x["image"], "input_mask": x["mask"], "image": y["image"], "mask": y["mask"]}

  return tf.data.Dataset.zip((a, b)).map(merge).prefetch(tf.data.AUTOTUNE)
