"""Linen modules per family; importing this registers them in `research.registry.MODELS`."""

from research.models import classifier as _classifier  # noqa: F401
from research.models import clip as _clip  # noqa: F401
from research.models import dalle as _dalle  # noqa: F401
from research.models import dvae as _dvae  # noqa: F401
from research.models import gan as _gan  # noqa: F401
from research.models import inception as _inception  # noqa: F401
from research.models import transgan as _transgan  # noqa: F401
from research.models import unet as _unet  # noqa: F401
from research.models import vae as _vae  # noqa: F401
