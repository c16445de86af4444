"""The FID InceptionV3: .pth reading without torch, conversion, block math, shapes, errors."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import UserError
from research.eval import feature_nets
from research.eval import inception_weights as iw
from research.models import inception
from tests import torch_pth


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A random pytorch-fid-shaped state_dict, saved as a torch zip .pth and converted to .npz."""
  d = tmp_path_factory.mktemp("inception")
  state = torch_pth.random_pytorch_fid_state(seed=0)
  pth, npz = str(d / "random_inception.pth"), str(d / "random_inception.npz")
  torch_pth.write_pth(pth, torch_pth.as_tensors(state))
  digest = iw.convert(pth, npz, expected_sha256=None)
  return state, pth, npz, digest


@pytest.mark.parametrize("legacy", [False, True])
def test_read_pth_rebuilds_strided_views_in_both_layouts(tmp_path, legacy):
  shared = torch_pth.Storage("s", np.arange(20, dtype=np.float32))
  state = {
    "w": torch_pth.tensor("0", np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    "steps": torch_pth.tensor("1", np.array(7, np.int64)),
    "view": torch_pth.Tensor(shared, 2, (3, 4), (1, 4)),  # transposed, at a storage offset
    "view2": torch_pth.Tensor(shared, 10, (5,), (2,)),  # a second view of the same storage
  }
  path = str(tmp_path / "x.pth")
  torch_pth.write_pth(path, state, legacy=legacy)
  out = iw.read_pth(path)
  assert list(out) == ["w", "steps", "view", "view2"]
  np.testing.assert_array_equal(out["w"], np.arange(24).reshape(2, 3, 4))
  assert out["steps"].dtype == np.int64 and int(out["steps"]) == 7
  # [i, j] = storage[2 + i + 4 j]
  np.testing.assert_array_equal(out["view"], np.arange(2, 18).reshape(4, 4).T[:3])
  np.testing.assert_array_equal(out["view2"], np.arange(20)[10:20:2])


def test_read_pth_refuses_foreign_globals(tmp_path):
  import pickle
  import zipfile

  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"x": os.system}, protocol=2))
  with pytest.raises(UserError, match=f"{path} asks for the global posix.system") as e:
    iw.read_pth(path)
  assert "\n" not in str(e.value)


def test_conversion_puts_every_tensor_in_place_with_the_bn_fold(converted):
  state, _, npz, digest = converted
  params, source = iw.load_params(npz)
  assert source == digest
  n_convs = len(torch_pth.PYTORCH_FID_CONVS)
  assert len(jax.tree.leaves(params)) == 2 * n_convs + 2
  for name, cout, cin, kh, kw in torch_pth.PYTORCH_FID_CONVS:
    node = params
    for part in name.split("."):
      node = node[part]
    w = state[f"{name}.conv.weight"].astype(np.float64)
    g, b = state[f"{name}.bn.weight"], state[f"{name}.bn.bias"]
    m, v = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
    scale = g / np.sqrt(v.astype(np.float64) + 1e-3)
    assert node["conv"]["kernel"].shape == (kh, kw, cin, cout)  # OIHW -> HWIO
    np.testing.assert_allclose(node["conv"]["kernel"], np.einsum("oihw,o->hwio", w, scale), 1e-6)
    np.testing.assert_allclose(node["conv"]["bias"], b - m * scale, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(params["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(params["fc"]["bias"], state["fc.bias"])


# --- an independent NumPy forward of single blocks, straight from the PyTorch tensors ------------


def _np_conv_bn_relu(state, name, x, stride=1, pad=(0, 0)):
  """torchvision BasicConv2d in NumPy float64: NHWC input, OIHW weight, BatchNorm eps 1e-3."""
  w = state[f"{name}.conv.weight"].astype(np.float64)  # [O, I, kh, kw]
  _, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
  ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], ho, wo, w.shape[0]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
      y += np.tensordot(patch, w[:, :, i, j], axes=([3], [1]))  # [B, ho, wo, O]
  bn = {k: state[f"{name}.bn.{k}"].astype(np.float64) for k in ("weight", "bias")}
  mean, var = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
  y = (y - mean) / np.sqrt(var + 1e-3) * bn["weight"] + bn["bias"]
  return np.maximum(y, 0)


def _np_pool3(x, mode):
  """3x3/1/pad-1 pooling: 'avg' averages valid pixels only (count_include_pad=False), 'max'."""
  fill = -np.inf if mode == "max" else 0.0
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
  ones = np.pad(np.ones(x.shape[1:3]), 1)
  h, w = x.shape[1:3]
  wins = np.stack([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)])
  if mode == "max":
    return wins.max(0)
  counts = sum(ones[i : i + h, j : j + w] for i in range(3) for j in range(3))
  return wins.sum(0) / counts[None, :, :, None]


def _np_inception_a(s, p, x):
  b1 = _np_conv_bn_relu(s, f"{p}.branch1x1", x)
  b5 = _np_conv_bn_relu(
    s, f"{p}.branch5x5_2", _np_conv_bn_relu(s, f"{p}.branch5x5_1", x), pad=(2, 2)
  )
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_1", x)
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_2", b3, pad=(1, 1))
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_3", b3, pad=(1, 1))
  bp = _np_conv_bn_relu(s, f"{p}.branch_pool", _np_pool3(x, "avg"))
  return np.concatenate([b1, b5, b3, bp], -1)


def _np_max_pool_3x3_s2(x):
  h, w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  wins = [x[:, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(3) for j in range(3)]
  return np.max(np.stack(wins), 0)


def _np_inception_b(s, p, x):
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3", x, stride=2)
  bd = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_1", x)
  bd = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_2", bd, pad=(1, 1))
  bd = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_3", bd, stride=2)
  return np.concatenate([b3, bd, _np_max_pool_3x3_s2(x)], -1)


def _np_inception_c(s, p, x):
  cbr = lambda name, h, pad=(0, 0): _np_conv_bn_relu(s, f"{p}.{name}", h, pad=pad)
  b1 = cbr("branch1x1", x)
  b7 = cbr("branch7x7_3", cbr("branch7x7_2", cbr("branch7x7_1", x), (0, 3)), (3, 0))
  bd = cbr("branch7x7dbl_2", cbr("branch7x7dbl_1", x), (3, 0))
  bd = cbr(
    "branch7x7dbl_5", cbr("branch7x7dbl_4", cbr("branch7x7dbl_3", bd, (0, 3)), (3, 0)), (0, 3)
  )
  bp = cbr("branch_pool", _np_pool3(x, "avg"))
  return np.concatenate([b1, b7, bd, bp], -1)


def _np_inception_d(s, p, x):
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3_2", _np_conv_bn_relu(s, f"{p}.branch3x3_1", x), stride=2)
  b7 = _np_conv_bn_relu(s, f"{p}.branch7x7x3_1", x)
  b7 = _np_conv_bn_relu(s, f"{p}.branch7x7x3_2", b7, pad=(0, 3))
  b7 = _np_conv_bn_relu(s, f"{p}.branch7x7x3_3", b7, pad=(3, 0))
  b7 = _np_conv_bn_relu(s, f"{p}.branch7x7x3_4", b7, stride=2)
  return np.concatenate([b3, b7, _np_max_pool_3x3_s2(x)], -1)


def _np_pytorch_fid_forward(s, image_u8):
  """pytorch-fid's InceptionV3(block 3) + fc in NumPy float64: uint8 [H, W, 1] -> (pool_3, logits)."""
  x = np.stack([_np_bilinear(image_u8[:, :, 0].astype(np.float64), 299, True)] * 3, -1)[None]
  x = x / 255 * 2 - 1  # [1, 299, 299, 3]
  x = _np_conv_bn_relu(s, "Conv2d_1a_3x3", x, stride=2)
  x = _np_conv_bn_relu(s, "Conv2d_2a_3x3", x)
  x = _np_max_pool_3x3_s2(_np_conv_bn_relu(s, "Conv2d_2b_3x3", x, pad=(1, 1)))
  x = _np_conv_bn_relu(s, "Conv2d_4a_3x3", _np_conv_bn_relu(s, "Conv2d_3b_1x1", x))
  x = _np_max_pool_3x3_s2(x)
  for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = _np_inception_a(s, p, x)
  x = _np_inception_b(s, "Mixed_6a", x)
  for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = _np_inception_c(s, p, x)
  x = _np_inception_d(s, "Mixed_7a", x)
  x = _np_inception_e(s, "Mixed_7b", x, "avg")
  x = _np_inception_e(s, "Mixed_7c", x, "max")
  pool3 = x.mean(axis=(1, 2))[0]  # [2048]
  return pool3, pool3 @ s["fc.weight"].T.astype(np.float64)


def _np_inception_e(s, p, x, pool):
  b1 = _np_conv_bn_relu(s, f"{p}.branch1x1", x)
  b3 = _np_conv_bn_relu(s, f"{p}.branch3x3_1", x)
  b3 = np.concatenate(
    [
      _np_conv_bn_relu(s, f"{p}.branch3x3_2a", b3, pad=(0, 1)),
      _np_conv_bn_relu(s, f"{p}.branch3x3_2b", b3, pad=(1, 0)),
    ],
    -1,
  )
  bd = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_1", x)
  bd = _np_conv_bn_relu(s, f"{p}.branch3x3dbl_2", bd, pad=(1, 1))
  bd = np.concatenate(
    [
      _np_conv_bn_relu(s, f"{p}.branch3x3dbl_3a", bd, pad=(0, 1)),
      _np_conv_bn_relu(s, f"{p}.branch3x3dbl_3b", bd, pad=(1, 0)),
    ],
    -1,
  )
  bp = _np_conv_bn_relu(s, f"{p}.branch_pool", _np_pool3(x, pool))
  return np.concatenate([b1, b3, bd, bp], -1)


@pytest.mark.parametrize(
  "block,module,cin",
  [
    ("Mixed_5b", inception.InceptionA(32), 192),  # avg pool without the padded zeros
    ("Mixed_6e", inception.InceptionC(192), 768),
    ("Mixed_7c", inception.InceptionE(max_pool=True), 2048),  # FIDInceptionE_2's max pool
  ],
)
def test_converted_blocks_match_a_numpy_forward_of_the_pytorch_tensors(
  converted, block, module, cin
):
  state, _, npz, _ = converted
  params, _ = iw.load_params(npz)
  # Positive inputs (post-ReLU in the real net) with structure at the borders, where padding counts.
  x = np.random.default_rng(1).uniform(0, 2, size=(1, 5, 6, cin))
  if isinstance(module, inception.InceptionA):
    want = _np_inception_a(state, block, x)
  elif isinstance(module, inception.InceptionC):
    want = _np_inception_c(state, block, x)
  else:
    want = _np_inception_e(state, block, x, "max" if module.max_pool else "avg")
  got = module.apply({"params": params[block]}, jnp.asarray(x, jnp.float32))
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_inception_features_and_logits_on_a_tiny_batch(converted):
  _, _, npz, _ = converted
  cfg = ml_collections.ConfigDict({"inception_weights": npz, "inception_allow_unofficial": True})
  net = feature_nets.FEATURE_NETS.get("inception_v3")(cfg)
  assert (net.feature_dim, net.num_classes, net.input_size) == (2048, 1008, 299)
  assert net.resize == "bilinear" and net.weights == npz
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8))  # gray digits
  out = jax.jit(net.apply)(net.params, images)
  assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  assert out["features"].dtype == jnp.float32
  f = np.asarray(out["features"])
  assert np.all(np.isfinite(f)) and np.all(f >= 0)  # pool_3 averages ReLU outputs
  assert not np.allclose(f[0], f[1])  # different images, different features
  # The whole network against pytorch-fid's forward written in NumPy from the PyTorch tensors
  # (IS logits: pool_3 @ W without the bias, as Salimans et al.'s code reads the graph).
  state = converted[0]
  pool3, logits = _np_pytorch_fid_forward(state, np.asarray(images[1]))  # one image: ~6 GFLOP
  np.testing.assert_allclose(f[1], pool3, rtol=1e-3, atol=1e-3 * np.abs(pool3).max())
  np.testing.assert_allclose(out["logits"][1], logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())


def test_bfloat16_inception_keeps_float32_outputs():
  model = inception.InceptionV3(dtype="bfloat16")
  x = jnp.zeros((2, 32, 32, 3), jnp.uint8)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out["features"].shape == (2, 2048) and out["features"].dtype == jnp.float32
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32


def _np_bilinear(x, size, half_pixel):
  """Separable bilinear resize of [H, W] in NumPy: half-pixel centres (PyTorch align_corners=False)
  or TF1's legacy src = dst * in / out."""

  def weights(n_in):
    scale = n_in / size
    src = (np.arange(size) + 0.5) * scale - 0.5 if half_pixel else np.arange(size) * scale
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((size, n_in))
    m[np.arange(size), lo] += 1 - (src - lo)
    m[np.arange(size), hi] += src - lo
    return m

  return weights(x.shape[0]) @ x @ weights(x.shape[1]).T


@pytest.mark.parametrize("resize,half_pixel", [("bilinear", True), ("tf1_bilinear", False)])
def test_preprocess_resizes_like_the_reference_and_scales_to_minus_one_one(resize, half_pixel):
  rng = np.random.default_rng(2)
  for h, w in ((28, 28), (400, 350)):  # up- and down-sampling (no antialias in either reference)
    img = rng.integers(0, 256, size=(1, h, w, 1), dtype=np.uint8)
    got = np.asarray(inception.preprocess(jnp.asarray(img), resize))
    assert got.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])  # gray tiled to RGB
    want = _np_bilinear(img[0, :, :, 0].astype(np.float64), 299, half_pixel) / 255 * 2 - 1
    np.testing.assert_allclose(got[0, :, :, 0], want, atol=1e-4)
  full = np.asarray(inception.preprocess(jnp.array([[[[0, 255, 0]]]], jnp.uint8), resize))
  np.testing.assert_allclose(full[0, 0, 0], [-1, 1, -1])
  with pytest.raises(UserError, match="uint8"):
    inception.preprocess(jnp.zeros((1, 8, 8, 3), jnp.float32), resize)


def test_convert_checks_the_checksum_and_the_cli_reports_one_line(converted, tmp_path, capsys):
  _, pth, _, digest = converted
  out = str(tmp_path / "x.npz")
  with pytest.raises(UserError, match=f"sha256 {digest}, not {iw.SHA256}"):
    iw.convert(pth, out)
  assert not os.path.exists(out)
  assert iw.main([f"--src={pth}", f"--out={out}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and err.count("\n") == 1


def test_missing_or_unofficial_weights_fail_fast_with_instructions(converted, monkeypatch):
  _, _, npz, _ = converted
  from research.config import base_config

  load = feature_nets.FEATURE_NETS.get("inception_v3")
  monkeypatch.delenv(iw.ENV_VAR, raising=False)
  with pytest.raises(UserError, match="python -m research.eval.inception_weights --src="):
    load(base_config().eval)  # inception_weights "" and no env var
  monkeypatch.setenv(iw.ENV_VAR, "/nonexistent/inception.npz")
  with pytest.raises(UserError, match=r"no Inception weights at /nonexistent.*pt_inception-2015"):
    load(ml_collections.ConfigDict({"batch_size": 8}))
  monkeypatch.setenv(iw.ENV_VAR, npz)  # the env var is read; this file is not the official one
  with pytest.raises(UserError, match="inception_allow_unofficial"):
    load(ml_collections.ConfigDict({"batch_size": 8}))


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
  state = torch_pth.random_pytorch_fid_state(seed=3)
  del state["Mixed_6e.branch_pool.conv.weight"]
  for k in ("weight", "bias", "running_mean", "running_var"):
    del state[f"Mixed_6e.branch_pool.bn.{k}"]
  pth = str(tmp_path / "bad.pth")
  torch_pth.write_pth(pth, torch_pth.as_tensors(state))
  with pytest.raises(UserError, match="missing .*Mixed_6e.*branch_pool"):
    iw.convert(pth, str(tmp_path / "bad.npz"), expected_sha256=None)
