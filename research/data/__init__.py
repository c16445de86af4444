"""Data pipeline: TFDS datasets by name as sharded global batches (see `pipeline`).

Importing this package imports neither tensorflow nor tensorflow_datasets; they load when a
pipeline function first needs them. The offline builders (`offline_mnist`, `offline_digits`)
register themselves when a pipeline function imports `research.data.offline_builders`.
"""

from research.data.pipeline import DatasetInfo, dataset_info, eval_iterator, prepare, train_iterator

__all__ = ["DatasetInfo", "dataset_info", "eval_iterator", "prepare", "train_iterator"]
