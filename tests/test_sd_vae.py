"""SD's KL VAE (`research.models.autoencoder_kl`) and its converter, against diffusers' AutoencoderKL.

Live tests build diffusers' model (skipped without diffusers); the recorded fixture
``tests/data/sd_vae_tiny.{safetensors,npz}`` repeats the numerical check without torch. Regenerate
it (needs torch, diffusers, safetensors) with ``python -m tests.test_sd_vae``.
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import UserError
from research.models import sd_vae_weights as W
from research.models.autoencoder_kl import (
  SD_VAE_CONFIG,
  SD_VAE_PARAM_COUNT,
  AutoencoderKL,
  param_shapes,
)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURE_WEIGHTS = os.path.join(DATA, "sd_vae_tiny.safetensors")
FIXTURE_IO = os.path.join(DATA, "sd_vae_tiny.npz")
TINY = dict(
  in_channels=3,
  out_channels=3,
  block_out_channels=(32, 64),
  layers_per_block=1,
  latent_channels=4,
  norm_num_groups=8,
)
# The recorded fixture is smaller still, to keep the files small (~100 KB).
FIXTURE_CONFIG = dict(TINY, block_out_channels=(8, 16), norm_num_groups=4)
FIXTURE_HW = 8


def _diffusers_vae(config: dict, seed: int = 0):
  """diffusers' AutoencoderKL(**config) with random weights, GroupNorm affines included."""
  import torch
  from diffusers import AutoencoderKL as TorchVAE

  n = len(config["block_out_channels"])
  torch.manual_seed(seed)
  vae = TorchVAE(
    **config, down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n
  ).eval()
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return vae


def _torch_outputs(vae, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  """diffusers' posterior mean/logvar and the decode of the mean, all NHWC float32."""
  import torch

  with torch.no_grad():
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
    dist = vae.encode(x).latent_dist
    dec = vae.decode(dist.mean).sample
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1).astype(np.float32)
  return {"mean": nhwc(dist.mean), "logvar": nhwc(dist.logvar), "decoded": nhwc(dec)}


def _state_dict(vae) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in vae.state_dict().items()}


def _flax_outputs(config: dict, params, x: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
  model = AutoencoderKL(**config)
  mean, logvar = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, x)
  dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, z)
  return {"mean": np.asarray(mean), "logvar": np.asarray(logvar), "decoded": np.asarray(dec)}


def _assert_close(got: dict, want: dict):
  for k in ("mean", "logvar", "decoded"):
    scale = float(np.max(np.abs(want[k])))
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * max(scale, 1.0), err_msg=k)


def _images(n: int, hw: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, hw, hw, 3)).astype(np.float32)


def _to_legacy(state: dict) -> dict:
  ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  out = {}
  for k, v in state.items():
    for new, old in ren.items():
      k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    out[k] = v
  return out


def _to_ldm(state: dict, num_blocks: int) -> dict:
  """diffusers names -> LDM/CompVis `first_stage_model.` names (the inverse of the converter's map)."""
  attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
  out = {}

  def rev(m: re.Match) -> str:
    return str(num_blocks - 1 - int(m[1]))

  for k, v in state.items():
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(
      r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
      lambda m: f"decoder.up.{rev(m)}.block.{m[2]}.",
      k,
    )
    k = re.sub(
      r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{rev(m)}.upsample.", k
    )
    k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", k)
    if m:
      k = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
      if m[2] != "group_norm" and m[3] == "weight":
        v = v[:, :, None, None]  # LDM's attention projections are 1x1 convs
    k = k.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
    out["first_stage_model." + k] = v
  return out


def _assert_same_tree(a, b):
  fa, fb = W.flatten(a), W.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.fixture(scope="module")
def live():
  """(diffusers state dict, inputs, diffusers outputs) for the TINY config at 16x16."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  vae = _diffusers_vae(TINY)
  x = _images(2, 16)
  return _state_dict(vae), x, _torch_outputs(vae, x)


def test_matches_diffusers_live(live):
  state, x, want = live
  params = W.convert_state_dict(state, TINY)
  assert want["mean"].shape == (2, 8, 8, 4)
  _assert_close(_flax_outputs(TINY, params, x, want["mean"]), want)


def test_recorded_fixture_without_torch():
  """The converter and the model against diffusers' recorded outputs, via the NumPy reader."""
  state = W.read_safetensors(FIXTURE_WEIGHTS)
  dtypes = _header_dtypes(FIXTURE_WEIGHTS)
  assert {"F32", "F16", "BF16"} <= set(dtypes.values())
  io = np.load(FIXTURE_IO)
  params = W.convert_state_dict(state, FIXTURE_CONFIG)
  want = {k: io[k] for k in ("mean", "logvar", "decoded")}
  _assert_close(_flax_outputs(FIXTURE_CONFIG, params, io["x"], io["mean"]), want)


def test_reader_matches_safetensors_package():
  pytest.importorskip("safetensors")
  pytest.importorskip("torch")  # BF16 needs torch in safetensors' own loader
  import safetensors.torch

  ours = W.read_safetensors(FIXTURE_WEIGHTS)
  theirs = {k: v.float().numpy() for k, v in safetensors.torch.load_file(FIXTURE_WEIGHTS).items()}
  assert sorted(ours) == sorted(theirs)
  for k in ours:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def _header_dtypes(path: str) -> dict[str, str]:
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_cli_round_trip(tmp_path):
  cfg_path = tmp_path / "config.json"
  cfg = dict(FIXTURE_CONFIG, _class_name="AutoencoderKL", block_out_channels=[8, 16])
  cfg_path.write_text(json.dumps(cfg))
  rc = W.main(
    [f"--src={FIXTURE_WEIGHTS}", f"--out={tmp_path / 'out'}", f"--config_json={cfg_path}"]
  )
  assert rc == 0
  params, config = W.load_params(str(tmp_path / "out"))
  assert config == dict(FIXTURE_CONFIG)
  _assert_same_tree(
    params, W.convert_state_dict(W.read_safetensors(FIXTURE_WEIGHTS), FIXTURE_CONFIG)
  )
  assert W.main([f"--src={tmp_path / 'nope.safetensors'}", f"--out={tmp_path}"]) == 2


def _fixture_state() -> dict[str, np.ndarray]:
  return W.read_safetensors(FIXTURE_WEIGHTS)


def test_legacy_and_ldm_names_convert_identically():
  state = _fixture_state()
  ref = W.convert_state_dict(state, FIXTURE_CONFIG)
  _assert_same_tree(W.convert_state_dict(_to_legacy(state), FIXTURE_CONFIG), ref)
  ldm = _to_ldm(state, len(FIXTURE_CONFIG["block_out_channels"]))
  assert "first_stage_model.decoder.up.1.block.0.conv1.weight" in ldm
  assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
  _assert_same_tree(W.convert_state_dict(ldm, FIXTURE_CONFIG), ref)
  # A full SD checkpoint: the UNet and the autoencoder's loss state are skipped.
  full = dict(
    ldm,
    **{
      "model.diffusion_model.x.weight": np.zeros(3),
      "first_stage_model.loss.logvar": np.zeros(()),
    },
  )
  _assert_same_tree(W.convert_state_dict(full, FIXTURE_CONFIG), ref)
  # Without the prefix (a standalone LDM VAE checkpoint) too.
  bare = {k.removeprefix("first_stage_model."): v for k, v in ldm.items()}
  _assert_same_tree(W.convert_state_dict(bare, FIXTURE_CONFIG), ref)


def _one_line_error(state, config=FIXTURE_CONFIG) -> str:
  with pytest.raises(UserError) as e:
    W.convert_state_dict(state, config)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_bad_state_dicts_are_one_line_errors():
  state = _fixture_state()
  missing = dict(state)
  del missing["decoder.conv_out.bias"]
  assert "decoder/conv_out/bias" in _one_line_error(missing)
  extra = dict(state, **{"encoder.extra.weight": np.zeros((3, 3))})
  assert "encoder.extra.weight" in _one_line_error(extra)
  wrong = dict(state, **{"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)})
  msg = _one_line_error(wrong)
  assert "encoder.conv_in.weight" in msg and "wrong shapes" in msg and "0 missing" in msg
  both = dict(state, **{"encoder.mid_block.attentions.0.query.weight": np.zeros((16, 16))})
  assert "query" in _one_line_error(both)
  _one_line_error(state, dict(FIXTURE_CONFIG, block_out_channels=(8, 32)))  # another config


def test_reader_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x05")
  with pytest.raises(UserError):
    W.read_safetensors(str(bad))
  raw = open(FIXTURE_WEIGHTS, "rb").read()
  (tmp_path / "cut.safetensors").write_bytes(raw[:-10])
  with pytest.raises(UserError, match="truncated"):
    W.read_safetensors(str(tmp_path / "cut.safetensors"))
  with pytest.raises(UserError):
    W.read_safetensors(str(tmp_path / "absent.safetensors"))


def test_sd_config_parameter_count():
  shapes = param_shapes(SD_VAE_CONFIG)  # jax.eval_shape: nothing materialised
  n = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes))
  assert n == SD_VAE_PARAM_COUNT == 83_653_863


def test_shapes_and_sampling():
  model = AutoencoderKL(**TINY)
  x = jnp.asarray(_images(1, 16))
  params = model.init(jax.random.key(0), x)["params"]
  assert model.apply({"params": params}, x).shape == x.shape
  mean, logvar = model.apply({"params": params}, x, method="encode")
  assert mean.shape == logvar.shape == (1, 8, 8, 4)
  a = model.apply({"params": params}, x, jax.random.key(1))
  b = model.apply({"params": params}, x)
  assert a.shape == b.shape and not np.allclose(a, b)


def make_fixture() -> None:
  """Writes tests/data/sd_vae_tiny.{safetensors,npz} from diffusers (F16/BF16/F32 weights)."""
  import safetensors.torch
  import torch

  vae = _diffusers_vae(FIXTURE_CONFIG, seed=1)
  tensors = {}
  with torch.no_grad():
    for i, (k, v) in enumerate(vae.state_dict().items()):
      dt = (torch.float16, torch.bfloat16, torch.float32)[i % 3]
      tensors[k] = v.to(dt).contiguous()
      v.copy_(tensors[k].float())  # the model computes with the stored (rounded) weights
  os.makedirs(DATA, exist_ok=True)
  safetensors.torch.save_file(tensors, FIXTURE_WEIGHTS)
  x = _images(2, FIXTURE_HW, seed=2)
  np.savez_compressed(FIXTURE_IO, x=x, **_torch_outputs(vae, x))
  print(f"wrote {FIXTURE_WEIGHTS} ({os.path.getsize(FIXTURE_WEIGHTS)} B), {FIXTURE_IO}")


if __name__ == "__main__":
  make_fixture()
