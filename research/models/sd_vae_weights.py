r"""Converts a diffusers `AutoencoderKL` state dict (SD's kl-f8 VAE) into Flax params, without torch.

  python -m research.models.sd_vae_weights --src=diffusion_pytorch_model.safetensors --out=<dir> \
      [--config_json=config.json]

writes ``<dir>/sd_vae_params.npz`` (flat ``a/b/c`` keys plus the model config as JSON), which
`load_params` reads back for `research.models.autoencoder_kl.AutoencoderKL`. The config defaults to
`SD_VAE_CONFIG`; `--config_json` reads diffusers' ``config.json`` beside the weights instead.

The .safetensors file is read with NumPy only (`read_safetensors`): an 8-byte little-endian header
length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian bytes;
F32, F16, BF16 (and F64) tensors become float32.

Accepted key sets (`convert_state_dict`):
- diffusers: ``encoder.down_blocks.{i}.resnets.{j}.conv1.weight``, ...; the mid-block attention as
  ``to_q/to_k/to_v/to_out.0`` or the legacy ``query/key/value/proj_attn``.
- LDM / CompVis (`first_stage_model.` prefix optional; other prefixes of a full SD checkpoint and the
  autoencoder's training-only ``loss.*`` keys are skipped): ``down.{i}.block.{j}``, ``down.{i}.
  downsample``, ``up.{n-1-i}`` (the decoder index is reversed), ``mid.block_{1,2}``, ``mid.attn_1``
  with ``norm/q/k/v/proj_out`` as 1x1 convs (squeezed), ``nin_shortcut``, ``norm_out``.

Layout: conv ``weight`` [O, I, kh, kw] -> ``kernel`` [kh, kw, I, O]; Linear ``weight`` [O, I] ->
``kernel`` [I, O]; GroupNorm ``weight`` -> ``scale``. Every key is used exactly once, and every
shape is checked against the model's init shapes; anything else is a one-line `UserError`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from research.errors import UserError
from research.models.autoencoder_kl import SD_VAE_CONFIG, param_shapes

OUT_NAME = "sd_vae_params.npz"
CONFIG_KEY = "__config__"  # the model config (JSON) stored in the .npz beside the params
CONVERT_COMMAND = "python -m research.models.sd_vae_weights --src=<safetensors> --out=<dir>"
_CONFIG_FIELDS = (
  "in_channels",
  "out_channels",
  "block_out_channels",
  "layers_per_block",
  "latent_channels",
  "norm_num_groups",
)
_MAX_HEADER = 100 << 20  # the safetensors spec caps the header at 100 MB
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8")}
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LDM_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file as a float32 NumPy array (F32, F16, BF16, F64 only)."""
  if not os.path.exists(path):
    raise UserError(f"no weight file at {path}; pass --src=<diffusion_pytorch_model.safetensors>")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise UserError(f"{path} is too short to be a .safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > min(_MAX_HEADER, size - 8):
      raise UserError(f"{path} is not a .safetensors file (header length {n}, file {size} bytes)")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UserError(
        f"{path} has an unreadable safetensors header ({e}); download it again"
      ) from None
    if not isinstance(header, dict):
      raise UserError(f"{path}'s safetensors header is not a JSON object; download it again")
    base, data_len = 8 + n, size - 8 - n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      try:
        dtype, shape, (begin, end) = (
          info["dtype"],
          [int(s) for s in info["shape"]],
          info["data_offsets"],
        )
      except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
      itemsize = 2 if dtype == "BF16" else _DTYPES[dtype].itemsize if dtype in _DTYPES else None
      if itemsize is None:
        raise UserError(
          f"{path}: tensor {name!r} has dtype {dtype}; only F32, F16, BF16, F64 are read"
        )
      count = int(np.prod(shape, dtype=np.int64))
      if not (0 <= begin <= end <= data_len) or end - begin != count * itemsize:
        raise UserError(
          f"{path}: tensor {name!r} ({dtype} {shape}) has byte range {begin}..{end} that does not "
          f"fit it or the file; the file is truncated or damaged"
        )
      f.seek(base + begin)
      raw = f.read(end - begin)
      if dtype == "BF16":  # the top 16 bits of a float32
        arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
      else:
        arr = np.frombuffer(raw, _DTYPES[dtype]).astype(np.float32)
      out[name] = arr.reshape(shape)
  return out


def _ldm_to_diffusers(key: str, num_blocks: int) -> str:
  """One LDM/CompVis first-stage key -> its diffusers name."""
  k = key
  k = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", k)
  k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)

  def up(m: re.Match) -> str:
    i = num_blocks - 1 - int(m.group(1))
    return f"decoder.up_blocks.{i}." + ("upsamplers.0." if m.group(2) else f"resnets.{m.group(3)}.")

  k = re.sub(r"^decoder\.up\.(\d+)\.(?:(upsample)|block\.(\d+))\.", up, k)
  k = re.sub(
    r"^(encoder|decoder)\.mid\.block_([12])\.",
    lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.",
    k,
  )
  m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", k)
  if m and m[2] in _LDM_ATTN:
    k = f"{m[1]}.mid_block.attentions.0.{_LDM_ATTN[m[2]]}.{m[3]}"
  k = k.replace(".nin_shortcut.", ".conv_shortcut.")
  k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
  return k


def _is_ldm(keys: list[str]) -> bool:
  return any(
    re.match(r"^(first_stage_model\.)?(encoder\.down\.|decoder\.up\.|encoder\.mid\.)", k)
    for k in keys
  )


def _flax_path(key: str) -> tuple[str, str]:
  """A diffusers key -> (flax module path "a/b_0/c", leaf "weight" or "bias")."""
  *mods, leaf = key.split(".")
  parts: list[str] = []
  for m in mods:
    if m.isdigit() and parts:
      parts[-1] += f"_{m}"
    else:
      parts.append(m)
  return "/".join(parts), leaf


def _config(config: Mapping[str, Any] | None) -> dict[str, Any]:
  cfg = dict(SD_VAE_CONFIG if config is None else config)
  cfg["block_out_channels"] = tuple(int(c) for c in cfg["block_out_channels"])
  return cfg


def _flat_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
  out: dict[str, tuple[int, ...]] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat_shapes(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = tuple(np.shape(v))
  return out


def convert_state_dict(
  state: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """A diffusers (or LDM) AutoencoderKL state dict -> nested flax params for `AutoencoderKL(**config)`."""
  cfg = _config(config)
  keys = list(state)
  if _is_ldm(keys):
    pre = "first_stage_model."
    if any(k.startswith(pre) for k in keys):  # a full SD checkpoint: only the first stage
      keys = [k for k in keys if k.startswith(pre)]
    keys = [k for k in keys if not k[len(pre) if k.startswith(pre) else 0 :].startswith("loss.")]
    n = len(cfg["block_out_channels"])
    renamed = {_ldm_to_diffusers(k.removeprefix(pre), n): k for k in keys}
    if len(renamed) != len(keys):
      raise UserError(
        "LDM state dict has keys that map to the same diffusers name; it is not a VAE"
      )
  else:
    renamed = {}
    for k in keys:
      *mods, leaf = k.split(".")
      if len(mods) >= 1 and mods[-1] in _LEGACY_ATTN:
        mods[-1] = _LEGACY_ATTN[mods[-1]]
      new = ".".join([*mods, leaf])
      if new in renamed:
        raise UserError(
          f"state dict has both {renamed[new]!r} and {k!r} (the same attention weight)"
        )
      renamed[new] = k
  want = _flat_shapes(param_shapes(cfg))
  flat: dict[str, np.ndarray] = {}
  unexpected: list[str] = []
  wrong: list[str] = []
  wrong_names: set[str] = set()
  for new, src in renamed.items():
    mod, leaf = _flax_path(new)
    w = np.asarray(state[src], np.float32)
    if leaf == "bias":
      name = f"{mod}/bias"
    elif leaf == "weight":
      name = f"{mod}/scale" if f"{mod}/scale" in want else f"{mod}/kernel"
      target = want.get(name)
      if target is not None and len(target) == 2 and w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w[:, :, 0, 0]  # LDM's 1x1-conv q/k/v/proj_out -> Linear
      if name.endswith("/kernel"):
        w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T  # OIHW -> HWIO; [O, I] -> [I, O]
    else:
      name = None
    if name is None or name not in want:
      unexpected.append(src)
      continue
    if w.shape != want[name]:
      wrong.append(f"{src} {tuple(np.shape(state[src]))} (flax {name} wants {want[name]})")
      wrong_names.add(name)
      continue
    flat[name] = w
  missing = sorted(set(want) - set(flat) - wrong_names)
  if unexpected or missing or wrong:
    cfg_s = ", ".join(f"{k}={cfg[k]}" for k in _CONFIG_FIELDS if k in cfg)
    raise UserError(
      f"state dict does not fit AutoencoderKL({cfg_s}): {len(unexpected)} unexpected keys "
      f"{sorted(unexpected)[:4]}, {len(missing)} missing params {missing[:4]}, {len(wrong)} wrong "
      f"shapes {wrong[:3]}; pass the VAE's own config.json with --config_json"
    )
  return unflatten(flat)


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{"a": {"b": {"c": x}}} -> {"a/b/c": x}."""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def read_config_json(path: str) -> dict[str, Any]:
  """diffusers' AutoencoderKL config.json -> the `AutoencoderKL` fields (missing ones: SD's)."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(
      f"cannot read the VAE config {path} ({e}); pass diffusers' config.json"
    ) from None
  if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise UserError(f"{path} configures a {raw['_class_name']}, not an AutoencoderKL")
  cfg = dict(SD_VAE_CONFIG)
  cfg.update({k: raw[k] for k in _CONFIG_FIELDS if k in raw})
  return _config(cfg)


def convert(src: str, out_dir: str, config: Mapping[str, Any] | None = None) -> str:
  """Reads `src` (.safetensors), converts it and writes ``out_dir/sd_vae_params.npz``; returns that path."""
  cfg = _config(config)
  params = convert_state_dict(read_safetensors(src), cfg)
  os.makedirs(out_dir, exist_ok=True)
  out = os.path.join(out_dir, OUT_NAME)
  tmp = out + ".tmp.npz"
  cfg_json = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})
  np.savez(tmp, **flatten(params), **{CONFIG_KEY: np.array(cfg_json)})
  os.replace(tmp, out)
  return out


def load_params(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """A converted .npz (or its directory) -> (nested params, the `AutoencoderKL` config)."""
  if os.path.isdir(path):
    path = os.path.join(path, OUT_NAME)
  if not os.path.exists(path):
    raise UserError(f"no converted SD VAE weights at {path}; convert them with `{CONVERT_COMMAND}`")
  try:  # plain arrays only: nothing is unpickled
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # not a zip, object arrays, truncated, ...
    reason = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UserError(
      f"{path} is not a plain-array .npz ({reason}); convert it again with `{CONVERT_COMMAND}`"
    ) from None
  if CONFIG_KEY not in arrays:
    raise UserError(f"{path} has no {CONFIG_KEY}; convert it again with `{CONVERT_COMMAND}`")
  cfg = _config(json.loads(str(arrays.pop(CONFIG_KEY))))
  params = unflatten(arrays)
  want, got = _flat_shapes(param_shapes(cfg)), _flat_shapes(params)
  if want != got:
    bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
    raise UserError(
      f"{path} does not fit its config ({bad[:3]}); convert it again with `{CONVERT_COMMAND}`"
    )
  return params, cfg


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="diffusers' diffusion_pytorch_model.safetensors")
  parser.add_argument("--out", required=True, help=f"the directory to write {OUT_NAME} into")
  parser.add_argument("--config_json", default=None, help="diffusers' config.json (default: SD's)")
  args = parser.parse_args(argv)
  try:
    cfg = read_config_json(args.config_json) if args.config_json else None
    out = convert(args.src, args.out, cfg)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
