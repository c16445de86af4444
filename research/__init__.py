"""Image-generation research codebase: one shared, sharded training step for every model family."""

from research.compile_only_tpu import quiet_libtpu_without_tpus

quiet_libtpu_without_tpus()
