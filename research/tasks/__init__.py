"""Model families as tasks for the shared trainer; importing this registers them all."""

from research.tasks import classifier as _classifier  # noqa: F401
from research.tasks import clip as _clip  # noqa: F401
from research.tasks import dalle as _dalle  # noqa: F401
from research.tasks import diffusion as _diffusion  # noqa: F401
from research.tasks import dvae as _dvae  # noqa: F401
from research.tasks import gan as _gan  # noqa: F401
from research.tasks import vae as _vae  # noqa: F401
