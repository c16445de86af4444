r"""Images -> dVAE token grids for DALL-E stage 2, and back to pixels.

  python -m research.tokenize --workdir=<dvae workdir> --split=train --out=<dir>
  python -m research.tokenize --workdir=<dvae workdir> --out=<dir> --decode [--num=64]

Encoding reads a whole TFDS split (the dVAE config's dataset, or --dataset), runs the jitted argmax
encoder (`DVAETask.encode_tokens`, no Gumbel noise) on all devices with the batch sharded over the
mesh, and writes TFRecord shards ``<out>/<split>-<process>-<shard>.tfrecord`` of tf.train.Examples:
``tokens`` int64 [h * w] (row-major), ``grid_shape`` int64 [2], ``index`` (position in the
process's part of the split), and every other feature the dataset has except the image (label,
caption, id, ...; nested features as ``a/b``). ``<out>/tokens_info.json`` records the grid, the
vocabulary, the features and counts.
Each process encodes its `tfds.even_splits` part; the last batch is padded with masked rows (as the
eval iterator does) and padding rows are not written. ``--decode`` reads the first --num examples
back from the shards and writes ``<out>/decoded.png`` (their tokens decoded to pixels).

`load_dvae` rebuilds the task from the config saved beside the checkpoints and restores the EMA
parameters alone (an Orbax partial restore: no optimizer state is read). TensorFlow is imported
only inside the functions that read or write records.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from research import data
from research.data import tfds_source
from research.errors import UserError
from research.eval import images as image_io
from research.train import sharding as shd
from research.train import state as state_lib
from research.train.checkpoint import Checkpointer

INFO_FILE = "tokens_info.json"


def load_dvae(
  workdir: str, image_shape: tuple[int, int, int] | None = None, use_ema: bool = True
) -> tuple[Any, dict[str, Any]]:
  """(task, variables) of the dVAE in `workdir`'s latest checkpoint, replicated on all devices.

  `image_shape` defaults to the saved config's dataset (its TFDS metadata); the network is fully
  convolutional, so other sizes divisible by the downsampling work too. EMA parameters are restored
  when the run kept them (`use_ema`), the raw parameters otherwise.
  """
  import research.models  # noqa: F401  (registers the networks)
  import research.tasks  # noqa: F401  (registers the families)
  from research.train import setup

  checkpointer = Checkpointer(workdir, save_every=1, async_save=False)
  step = checkpointer.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints; train the dVAE there first")
  config = ml_collections.ConfigDict(checkpointer.saved_config(step))
  if config.task.name != "dvae":
    raise UserError(f"{workdir} holds a {config.task.name!r} run, not a dVAE; pass a dVAE workdir")
  info = (
    data.DatasetInfo(tuple(image_shape), None, 0, 0)
    if image_shape
    else data.dataset_info(config.data)
  )
  task = setup.build_task(config, info)
  abstract = jax.eval_shape(
    task.init, jax.random.key(0), state_lib.example_batch(info.image_shape, False)
  )
  mesh = shd.make_mesh(-1, 1)
  replicated = shd.replicated(mesh)
  target = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
    abstract["model"]["params"],
  )
  which = "ema_params" if use_ema and config.train.ema_decay > 0 else "params"
  item = {"parts": {"model": {which: target}}}
  restored = checkpointer.manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item=item,
        restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), item),
        partial_restore=True,
      )
    ),
  )
  checkpointer.close()
  params = restored.state["parts"]["model"][which]
  return task, {"model": {"params": params}}


# ---- records ------------------------------------------------------------------------------------
def _flatten(example: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in example.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _kind(value: np.ndarray) -> str:
  if value.dtype.kind in "biu":
    return "int64"
  if value.dtype.kind == "f":
    return "float"
  return "bytes"


def _feature(tf: Any, value: Any) -> Any:
  value = np.asarray(value).reshape(-1)
  kind = _kind(value)
  if kind == "int64":
    return tf.train.Feature(int64_list=tf.train.Int64List(value=value.astype(np.int64)))
  if kind == "float":
    return tf.train.Feature(float_list=tf.train.FloatList(value=value.astype(np.float32)))
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(v) for v in value]))


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array sharded over the batch axes, in order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  local = multihost_utils.global_array_to_host_local_array(
    x, x.sharding.mesh, jax.sharding.PartitionSpec(shd.BATCH_AXES)
  )
  return np.asarray(local)


def encode_split(
  task: Any,
  variables: dict[str, Any],
  data_config: Any,
  split: str,
  out: str,
  *,
  batch_size: int = 256,
  shard_size: int = 50_000,
) -> dict[str, Any]:
  """Tokenizes `split` of `data_config.name` into TFRecord shards under `out`; returns the info."""
  tf = tfds_source.import_tf()
  tfds = tfds_source.import_tfds()
  from research.data import tf_pipeline

  mesh = shd.make_mesh(-1, 1)
  sharding = shd.batch_sharding(mesh)
  local_batch = data.pipeline.local_batch_size(batch_size, sharding, "--batch_size")
  builder = tfds_source.get_builder(data_config)
  tfds_source.num_examples(builder, split, "--split")
  num_batches = tf_pipeline.eval_num_batches(
    builder, split, local_batch=local_batch, process_count=jax.process_count()
  )
  part = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
  ds = builder.as_dataset(split=part, shuffle_files=False)
  h, w, c = tfds_source.image_shape(builder, data_config.get("image_size"))
  resize = tuple(builder.info.features["image"].shape[:2]) != (h, w)

  def prepare(ex: dict[str, Any]) -> dict[str, Any]:
    image = ex["image"]
    if resize:  # as the training pipeline: bilinear, antialiased, rounded
      image = tf.image.resize(image, [h, w], method="bilinear", antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return {**ex, "image": tf.ensure_shape(image, [h, w, c]), "mask": tf.constant(1.0)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  n = int(ds.cardinality().numpy())
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  pad = num_batches * local_batch - n
  # Examples stay unbatched (captions vary in length); the host stacks the images of each batch.
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(pad))
  encode = jax.jit(task.encode_tokens, out_shardings=sharding)
  gh, gw = task.grid_shape
  path = epath.Path(out)
  path.mkdir(parents=True, exist_ok=True)
  base = f"{split.replace('/', '_').replace('[', '_').replace(']', '').replace(':', '-')}"
  writer, written, shard, files = None, 0, 0, []
  features: dict[str, str] = {}
  examples = iter(tfds.as_numpy(ds))
  for _ in range(num_batches):
    rows = [next(examples) for _ in range(local_batch)]
    images = np.stack([r["image"] for r in rows])
    tokens = _local_rows(
      encode(variables, jax.make_array_from_process_local_data(sharding, images))
    )
    for row, grid in zip(rows, tokens, strict=True):
      if not row["mask"]:
        continue
      if writer is None or written % shard_size == 0 and written:
        if writer is not None:
          writer.close()
          shard += 1
        name = f"{base}-{jax.process_index():03d}-{shard:05d}.tfrecord"
        files.append(name)
        writer = tf.io.TFRecordWriter(str(path / name))
      extra = {k: v for k, v in _flatten(row).items() if k not in ("image", "mask")}
      feats = {
        "tokens": _feature(tf, grid.reshape(-1)),
        "grid_shape": _feature(tf, np.array([gh, gw])),
        "index": _feature(tf, np.array([written])),
        **{k: _feature(tf, v) for k, v in extra.items()},
      }
      features.update({k: _kind(np.asarray(v)) for k, v in extra.items()})
      writer.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
      written += 1
  if writer is not None:
    writer.close()
  info = {
    "dataset": builder.name,
    "split": split,
    "grid_shape": [gh, gw],
    "vocab_size": int(task.vocab_size),
    "image_shape": [h, w, c],
    "num_examples": written,
    "features": {"tokens": "int64", "grid_shape": "int64", "index": "int64", **features},
    "files": files,
  }
  if jax.process_count() > 1:  # one info file per process; counts differ by a row at most
    (path / f"tokens_info.{jax.process_index():03d}.json").write_text(json.dumps(info, indent=2))
  else:
    (path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
  return info


def read_tokens(out: str) -> Iterator[dict[str, np.ndarray]]:
  """The examples of a tokenized split, in order: ``tokens`` int32 [h, w] and the other features
  (ints int64, floats float32, strings bytes; 1-element features as scalars)."""
  tf = tfds_source.import_tf()
  path = epath.Path(out)
  info = json.loads((path / INFO_FILE).read_text())
  kinds = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}
  spec = {k: tf.io.VarLenFeature(kinds[v]) for k, v in info["features"].items()}
  files = [str(path / f) for f in info["files"]]
  for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
    parsed = tf.io.parse_single_example(record, spec)
    ex = {k: tf.sparse.to_dense(v).numpy() for k, v in parsed.items()}
    ex = {k: v[0] if v.shape == (1,) and k != "tokens" else v for k, v in ex.items()}
    ex["tokens"] = ex["tokens"].astype(np.int32).reshape(info["grid_shape"])
    yield ex


def decode_records(task: Any, variables: dict[str, Any], out: str, num: int = 64) -> np.ndarray:
  """Decodes the first `num` token grids of `out` to uint8 [n, H, W, C] and writes decoded.png."""
  tokens = []
  for ex in read_tokens(out):
    tokens.append(ex["tokens"])
    if len(tokens) == num:
      break
  if not tokens:
    raise UserError(f"no records in {out}; run the tokenizer without --decode first")
  images = np.asarray(jax.jit(task.decode_tokens)(variables, jnp.asarray(np.stack(tokens))))
  image_io.save_grid(images, epath.Path(out) / "decoded.png")
  return images


# ---- the command line ----------------------------------------------------------------------------
def main(argv: list[str]) -> None:
  del argv
  from absl import flags

  f = flags.FLAGS
  task, variables = load_dvae(f.workdir)
  if f.decode:
    images = decode_records(task, variables, f.out, f.num)
    print(f"wrote {len(images)} decoded images to {os.path.join(f.out, 'decoded.png')}")
    return
  checkpointer = Checkpointer(f.workdir, save_every=1, async_save=False)
  config = ml_collections.ConfigDict(checkpointer.saved_config(checkpointer.latest_step()))
  checkpointer.close()
  with config.unlocked():
    if f.data_dir:
      config.data.data_dir = f.data_dir
    if f.dataset:
      config.data.name = f.dataset
  info = encode_split(
    task,
    variables,
    config.data,
    f.split,
    f.out,
    batch_size=f.batch_size,
    shard_size=f.shard_size,
  )
  if jax.process_index() == 0:
    shown = {k: v for k, v in info.items() if k != "files"}
    print(json.dumps({**shown, "num_files": len(info["files"])}), file=sys.stdout)


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("workdir", None, "The dVAE's run directory.", required=True)
  flags.DEFINE_string(
    "out", None, "Where the token shards go (or are read with --decode).", required=True
  )
  flags.DEFINE_string("split", "train", "TFDS split to encode (slicing allowed).")
  flags.DEFINE_string("dataset", None, "TFDS name; default: the dVAE config's dataset.")
  flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the dVAE config's.")
  flags.DEFINE_integer("batch_size", 256, "Global batch size (a multiple of the device count).")
  flags.DEFINE_integer("shard_size", 50_000, "Examples per TFRecord shard.")
  flags.DEFINE_bool("decode", False, "Decode the first --num records of --out to decoded.png.")
  flags.DEFINE_integer("num", 64, "Records decoded with --decode.")


def run() -> None:
  from absl import app

  _define_flags()

  def wrapped(argv):
    cache = os.environ.get("RESEARCH_JAX_CACHE", os.path.expanduser("~/.cache/research_jax"))
    if cache:  # the persistent compilation cache, as research.main
      jax.config.update("jax_compilation_cache_dir", cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_threefry_partitionable", True)
    try:
      main(argv)
    except UserError as e:
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)


if __name__ == "__main__":
  run()
