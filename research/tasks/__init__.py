"""Model families as tasks for the shared trainer; importing this registers them all."""

from research.tasks import vae as _vae  # noqa: F401
