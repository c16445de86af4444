"""`pix2pix/<config>`: the paired datasets of pix2pix (Isola et al. 2017) as a TFDS builder.

TFDS has no paired pix2pix dataset, so this builder (registered with TFDS on import; the pipeline
imports it through `tfds_source.download_builder_classes`) downloads the authors' tarballs,
``http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/<config>.tar.gz``, when it is prepared with
config.data.download=True (or `python -m research.data.prepare --name=pix2pix/facades`). Each
JPEG there holds the two images of a pair side by side, A|B; the builder splits it into halves and
stores the condition as 'input' and the target as 'image' (both uint8 [S, S, 3], JPEG), so every
config reads in the conventional direction:

  config          input (condition)       image (target)    splits            S
  facades         right: label map        left: photo       train/val/test    256
  edges2shoes     left: edges (HED)       right: photo      train/val         256
  edges2handbags  left: edges (HED)       right: photo      train/val         256
  maps            left: aerial photo      right: map        train/val         600
  night2day       left: night             right: day        train/val/test    256
  cityscapes      right: label map        left: photo       train/val         256

(facades and cityscapes are the torch repo's `--direction BtoA`.) A half whose size differs from
S is resized to S x S (bicubic), so every example has the declared shape. Example keys are the
file names. Splits the tarball lacks are left out.

Cityscapes is not served (its licence forbids redistribution): download gtFine_trainvaltest.zip and
leftImg8bit_trainvaltest.zip from https://cityscapes-dataset.com, run the authors'
``datasets/prepare_cityscapes_dataset.py --gtFine_dir ... --leftImg8bit_dir ... --output_dir
<data_dir>/downloads/manual/cityscapes`` (TFDS's manual dir; photo | label map, 512x256), then
prepare ``pix2pix/cityscapes`` as above. The script writes Cityscapes' val images to ``test/``,
which becomes the 'val' split here (a ``val/`` folder is used instead when present).
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from research.errors import UserError

HOST = "efrosgans.eecs.berkeley.edu"
URL = f"http://{HOST}/pix2pix/datasets/{{name}}.tar.gz"
_PROBE_TIMEOUT_S = 10.0
_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(eq=False)
class Pix2PixConfig(tfds.core.BuilderConfig):
  """One pix2pix dataset: which half is the input, the side S of a half, its splits."""

  input_side: str = "left"  # The half of each A|B image that is the condition 'input'.
  size: int = 256
  splits: tuple[str, ...] = ("train", "val")
  manual: bool = False  # Not downloadable: read from TFDS's manual dir (cityscapes).


def _config(name: str, input_side: str, splits: tuple[str, ...], **kw: Any) -> Pix2PixConfig:
  image_side = "left" if input_side == "right" else "right"
  return Pix2PixConfig(
    name=name,
    description=f"pix2pix {name}: input = {input_side} half, image = {image_side} half.",
    input_side=input_side,
    splits=splits,
    **kw,
  )


CONFIGS = (
  _config("facades", "right", ("train", "val", "test")),
  _config("edges2shoes", "left", ("train", "val")),
  _config("edges2handbags", "left", ("train", "val")),
  _config("maps", "left", ("train", "val"), size=600),
  _config("night2day", "left", ("train", "val", "test")),
  _config("cityscapes", "right", ("train", "val"), manual=True),
)


def split_pair(pair: np.ndarray, *, input_side: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """An A|B image uint8 [H, 2W, 3] -> (input, image), each uint8 [size, size, 3].

  The halves are [:, :W] (left) and [:, W:] (right); `input_side` says which is the input.
  """
  from PIL import Image

  h, w2 = pair.shape[:2]
  if w2 < 2 or w2 % 2:
    raise UserError(
      f"a pix2pix image of shape {pair.shape} is not two halves side by side; check the download"
    )
  left, right = pair[:, : w2 // 2], pair[:, w2 // 2 :]
  halves = []
  for half in (left, right) if input_side == "left" else (right, left):
    if half.shape[:2] != (size, size):
      resized = Image.fromarray(half).resize((size, size), Image.Resampling.BICUBIC)
      half = np.asarray(resized)
    halves.append(np.ascontiguousarray(half))
  return halves[0], halves[1]


def check_reachable(
  dataset: str, host: str = HOST, port: int = 80, timeout: float = _PROBE_TIMEOUT_S
) -> None:
  """Raises a one-line `UserError` unless a TCP connection to `host` opens within `timeout` s.

  Without it, a machine with no internet spends minutes in urllib3's retries before the download
  fails. Name resolution runs in a daemon thread, so it cannot outlast the timeout either. Behind
  an HTTP proxy (http_proxy set) the host may be reachable only through it: no probe then.
  """
  if urllib.request.getproxies().get("http"):
    return
  error: list[BaseException] = []

  def connect() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
      error.append(e)

  probe = threading.Thread(target=connect, name="pix2pix_probe", daemon=True)
  probe.start()
  probe.join(timeout)
  if probe.is_alive() or error:
    reason = str(error[0]).splitlines()[0] if error else f"no answer in {timeout:g} s"
    raise UserError(
      f"cannot reach {host} to download {dataset} ({reason}); prepare it on a machine with "
      f"internet (`python -m research.data.prepare --name={dataset} --data_dir=DIR`) and set "
      "config.data.data_dir to DIR"
    )


def _jpeg(image: np.ndarray) -> bytes:
  """Encodes uint8 [H, W, 3] as a JPEG of the authors' quality (100, no chroma subsampling)."""
  from PIL import Image

  out = io.BytesIO()
  Image.fromarray(image).save(out, format="JPEG", quality=100, subsampling=0)
  return out.getvalue()


def generate_examples(
  directory: Any, *, input_side: str, size: int
) -> Iterator[tuple[str, dict[str, bytes]]]:
  """(file name, {'input': JPEG bytes, 'image': JPEG bytes}) for each A|B image in `directory`."""
  from PIL import Image

  directory = os.fspath(directory)
  for name in sorted(os.listdir(directory)):
    if not name.lower().endswith(_EXTENSIONS):
      continue
    with Image.open(os.path.join(directory, name)) as f:
      pair = np.asarray(f.convert("RGB"))
    condition, target = split_pair(pair, input_side=input_side, size=size)
    yield name, {"input": _jpeg(condition), "image": _jpeg(target)}


class Pix2Pix(tfds.core.GeneratorBasedBuilder):
  """The paired pix2pix datasets (facades, edges2shoes, ...), A|B JPEGs split into halves."""

  name = "pix2pix"  # Not TFDS's snake case of the class name, 'pix2_pix'.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "efrosgans pix2pix tarballs, A|B split."}
  BUILDER_CONFIGS: ClassVar[list[Pix2PixConfig]] = list(CONFIGS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Only pix2pix/cityscapes: run the pix2pix authors' datasets/prepare_cityscapes_dataset.py on "
    "your Cityscapes download with --output_dir <manual_dir>/cityscapes."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    shape = (self.builder_config.size, self.builder_config.size, 3)
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "input": tfds.features.Image(shape=shape, encoding_format="jpeg"),
          "image": tfds.features.Image(shape=shape, encoding_format="jpeg"),
        }
      ),
      supervised_keys=("input", "image"),
      homepage="https://phillipi.github.io/pix2pix/",
    )

  def _root(self, dl_manager: Any) -> str:
    """The folder holding the split folders: the extracted tarball, or the manual dir's."""
    name = self.builder_config.name
    if not self.builder_config.manual:
      check_reachable(f"pix2pix/{name}", host=HOST)
      return os.path.join(os.fspath(dl_manager.download_and_extract(URL.format(name=name))), name)
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # Missing or empty; TFDS's message spans several lines.
      manual_dir = os.path.join(os.fspath(self.data_dir_root), "downloads", "manual")
    root = os.path.join(manual_dir, name)
    if not os.path.isdir(os.path.join(root, "train")):
      raise UserError(
        f"pix2pix/{name} is a manual download and {root}/train is missing; run the pix2pix "
        f"authors' datasets/prepare_cityscapes_dataset.py with --output_dir {root} (see "
        "research/data/pix2pix_builder.py)"
      )
    return root

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    config = self.builder_config
    root = self._root(dl_manager)
    out = {}
    for split in config.splits:
      candidates = [split] + (["test"] if config.manual and split == "val" else [])
      folder = next((f for f in candidates if os.path.isdir(os.path.join(root, f))), None)
      if folder is not None:
        directory = os.path.join(root, folder)
        out[split] = self._generate_examples(directory)
    if not out:
      raise UserError(
        f"pix2pix/{config.name}: none of the split folders {list(config.splits)} is in {root}; "
        "delete the download and prepare again"
      )
    return out

  def _generate_examples(self, directory: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    return generate_examples(
      directory, input_side=self.builder_config.input_side, size=self.builder_config.size
    )
