"""Name -> factory registries for tasks (model families), networks, feature networks, evaluators.

Shared code never branches on a family name: it looks the name up here. Each registry knows which
module defines each of its names (the tables below, one line per entry) and imports that module the
first time the name is asked for; the module registers its factory with the decorator. So nothing
is imported until it is used (an experiment config loads without JAX), and no package has to
import all of its modules to fill the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from research.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
  """A named table of factories, filled lazily, with a one-line error for unknown names."""

  def __init__(self, kind: str, config_key: str, modules: dict[str, str]):
    self.kind = kind
    self.config_key = config_key
    self.modules = modules  # name -> the module that registers it
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    if name not in self._entries and name in self.modules:
      importlib.import_module(self.modules[name])
    if name not in self._entries:
      known = ", ".join(self.names()) or "none"
      raise UserError(f"unknown {self.kind} {name!r} in {self.config_key}; known: {known}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(set(self.modules) | set(self._entries))


# A task factory takes (config, research.data.DatasetInfo) and returns a research.tasks.base.Task.
TASKS: Registry[Callable[..., Any]] = Registry(
  "task",
  "config.task.name",
  {
    "autoencoder": "research.tasks.autoencoder",
    "classifier": "research.tasks.classifier",
    "clip": "research.tasks.clip",
    "dalle": "research.tasks.dalle",
    "diffusion": "research.tasks.diffusion",
    "dvae": "research.tasks.dvae",
    "cyclegan": "research.tasks.cyclegan",
    "gan": "research.tasks.gan",
    "pix2pix": "research.tasks.pix2pix",
    "vae": "research.tasks.vae",
  },
)

# A model entry is a linen Module class, built as `cls(**fields)` from typed config fields.
MODELS: Registry[Any] = Registry(
  "model",
  "config.model.name",
  {
    "autoencoder_kl": "research.models.autoencoder_kl",
    "clip": "research.models.clip",
    "conv_vae": "research.models.vae",
    "dalle_transformer": "research.models.dalle",
    "dcgan_discriminator": "research.models.gan",
    "dcgan_generator": "research.models.gan",
    "ddpm_unet": "research.models.unet",
    "digits_cnn": "research.models.classifier",
    "dit": "research.models.dit",
    "dvae": "research.models.dvae",
    "inception_v3_fid": "research.models.inception",
    "mlp_discriminator": "research.models.gan",
    "mlp_generator": "research.models.gan",
    "mlp_vae": "research.models.vae",
    "patch_discriminator": "research.models.image_translation",
    "pix2pix_unet": "research.models.image_translation",
    "resnet_generator": "research.models.image_translation",
    "transgan_generator": "research.models.transgan",
    "vit_discriminator": "research.models.transgan",
  },
)

# A feature network loader takes config.eval and returns a research.eval.feature_nets.FeatureNet.
FEATURE_NETS: Registry[Callable[..., Any]] = Registry(
  "feature network",
  "config.eval.feature_net",
  {
    "digits_classifier": "research.eval.feature_nets",
    "inception_v3": "research.eval.feature_nets",
  },
)

# An evaluator factory takes (its options, config, task, info) and returns a callable
# (variables, batches, rng) -> metrics; experiments choose them by name in config.evals.
EVALUATORS: Registry[Callable[..., Any]] = Registry(
  "evaluator",
  "config.evals",
  {
    "caption_digits": "research.eval.caption_digits",
    "clip_digits": "research.eval.clip_digits",
  },
)


def build_module(fields: dict[str, Any], config_key: str = "config.model") -> Any:
  """Builds a registered linen module from `{'name': ..., **typed_fields}`."""
  fields = dict(fields)
  if "name" not in fields:
    raise UserError(f"{config_key} has no 'name'; set {config_key}.name to one of {MODELS.names()}")
  cls = MODELS.get(fields.pop("name"))
  try:
    return cls(**fields)
  except TypeError as e:
    raise UserError(f"{config_key} does not fit model {cls.__name__}: {e}") from None
