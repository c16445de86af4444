"""A DiT small enough for end-to-end tests: flow_tiny.py's run (8x8 offline digits) with a DiT of
2x2 patches (16 tokens) and 2 blocks instead of its UNet.

Arguments: ``objective=ddpm|flow|edm|meanflow`` (meanflow gives the model two times),
``conditional``.
"""

from research.config import adam
from tests.configs import flow_tiny


def get_config(arg=None):
  c = flow_tiny.get_config(arg)
  c.task.likelihood_steps = 0
  times = c.model.num_times
  c.model = {
    "name": "dit",
    "patch_size": 2,
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "num_times": times,
    "dtype": "float32",
  }
  c.optim.model = adam(1e-3, warmup_steps=0, grad_clip_norm=1.0)
  return c
