"""A small LeNet-style CNN for in-domain evaluation of digit generators (linen, typed fields only).

Its penultimate layer is the feature space of the digits FID / KID / precision-recall and its softmax
the "classifier score" (model_specs.md C, "MNIST-scale FID"): conv-ReLU-pool stages, one hidden
dense layer (the features), dropout, and the class logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.registry import MODELS


@MODELS.register("digits_cnn")
class DigitsCNN(nn.Module):
  """Images in [0, 1] [B, H, W, C] -> (logits [B, K], features [B, hidden]).

  Each stage is ``convs_per_stage`` 3x3 ReLU convolutions then a 2x2 max-pool; 28x28 inputs reach
  7x7 after two stages, 8x8 inputs 2x2.
  """

  num_classes: int = 10
  channels: Sequence[int] = (32, 64)
  convs_per_stage: int = 1
  hidden: int = 128
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    for c in self.channels:
      for _ in range(self.convs_per_stage):
        x = nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)  # [B, H/4 * W/4 * channels[-1]]
    features = nn.relu(nn.Dense(self.hidden)(x))  # [B, hidden]: the evaluation features
    h = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32)(h)  # [B, K]
    return logits, features
