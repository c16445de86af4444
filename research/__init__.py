"""Image-generation research codebase: one shared, sharded training step for every model family."""
