"""tf.data input pipelines and the embedded synthetic dataset (the only package that imports tensorflow).

- `make_train_iterator`: endless, per-host, deterministic, resumable image-text batches (iterator.py) from
  the sources of image_text.py: TFDS, TFRecord and webdataset shards (the tar format: webdataset.py;
  `python -m clip_jax.data.write_webdataset` writes shards), caption folders, the synthetic set.
- `make_eval_dataset`, `dataset_info`: padded image-label evaluation batches (image_label.py).
- `make_retrieval_dataset`: images with several captions each (retrieval.py).
- `prepare_synthetic`, `zeroshot_tasks`: the embedded `clip_synthetic` dataset (synthetic.py).
"""

import tensorflow as _tf

# tf.data runs on the host. Hide accelerators from tensorflow, so that a GPU build of it does not claim
# the device memory JAX needs (a no-op with tensorflow-cpu; too late once TF has initialised its devices).
try:
    _tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass

from clip_jax.data.image_label import EvalDatasetInfo, dataset_info, make_eval_dataset
from clip_jax.data.image_text import DATA_CONFIG_DEFAULTS, SOURCES, data_config, default_data_config
from clip_jax.data.iterator import TrainIterator, make_train_iterator
from clip_jax.data.retrieval import make_retrieval_dataset
from clip_jax.data.synthetic import SPLITS as SYNTHETIC_SPLITS
from clip_jax.data.synthetic import prepare_synthetic, zeroshot_tasks

__all__ = [
    "DATA_CONFIG_DEFAULTS",
    "EvalDatasetInfo",
    "SOURCES",
    "SYNTHETIC_SPLITS",
    "TrainIterator",
    "data_config",
    "dataset_info",
    "default_data_config",
    "make_eval_dataset",
    "make_retrieval_dataset",
    "make_train_iterator",
    "prepare_synthetic",
    "zeroshot_tasks",
]
