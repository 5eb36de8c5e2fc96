"""Image-text retrieval input: images with several captions each (coco_captions-like, or clip_synthetic).

    ds = make_retrieval_dataset("clip_synthetic", "test", batch_size=64, image_size=64)
    for batch in ds:
        batch["image"]      # float32 [b, S, S, 3], the eval transform (PIL; tf_ops.eval_image)
        batch["text"]       # int32 [b, K, L]: K captions per image, tokenized
        batch["text_mask"]  # bool [b, K]: False where an image has fewer than K captions
        batch["mask"]       # bool [b]: False on padding rows (see padding.py)

Image i's captions are the positives of image i. K is the length of a fixed-length caption feature, else
`captions_per_image` (default 5, COCO's usual count; extra captions are dropped).
"""

from __future__ import annotations

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from clip_jax.data import builders, padding
from clip_jax.data.image_text import get_path
from clip_jax.data.tf_ops import EVAL_PREPROCESS, Tokenizer, eval_image, no_autograph, tf_tokenize
from clip_jax.preprocess import EvalTransform

_CAPTION_KEYS = ("captions/text", "captions", "caption")
DEFAULT_CAPTIONS_PER_IMAGE = 5


def _caption_key(features: tfds.features.FeaturesDict, caption_key: str | None) -> str:
    for key in (caption_key,) if caption_key else _CAPTION_KEYS:
        try:
            get_path(features, key)
            return key
        except (KeyError, TypeError):
            continue
    raise ValueError(f"no caption feature {caption_key or _CAPTION_KEYS} in {list(features.keys())}")


def _fixed_length(features: tfds.features.FeaturesDict, key: str) -> int | None:
    """The static caption count of a sequence feature (e.g. Sequence(Text(), length=3)), else None."""
    top, *rest = key.split("/")
    shape = features[top].shape
    for part in rest:
        shape = shape[part]
    return shape[0] if isinstance(shape, tuple) and shape and shape[0] is not None else None


def make_retrieval_dataset(
    name_or_source: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    context_length: int = 77,
    data_dir: str | None = None,
    image_key: str = "image",
    caption_key: str | None = None,
    captions_per_image: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    preprocess: str = "pil",
    transform: EvalTransform | None = None,
    tokenizer: Tokenizer | None = None,
) -> padding.PaddedDataset:
    """Padded, per-host batches of images and their captions; `batch_size` is global (images).
    `transform` and `tokenizer` are the model's (`clip_jax.inputs.ModelInputs`; default CLIP's)."""
    if preprocess not in EVAL_PREPROCESS:
        raise ValueError(f"preprocess={preprocess!r}; choose from {EVAL_PREPROCESS}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    builder = builders.get_builder(name_or_source, data_dir)
    features = builder.info.features
    caption_key = _caption_key(features, caption_key)
    if captions_per_image is None:
        captions_per_image = _fixed_length(features, caption_key) or DEFAULT_CAPTIONS_PER_IMAGE
    k = captions_per_image
    shard = padding.host_shard(builders.split_size(builder, split), batch_size, process_index, process_count)

    def prepare(example):
        captions = tf.reshape(tf.convert_to_tensor(get_path(example, caption_key)), [-1])[:k]
        count = tf.size(captions)
        captions = tf.concat([captions, tf.fill([k - count], "")], axis=0)
        captions.set_shape([k])
        return {
            "image": eval_image(example[image_key], image_size, preprocess, transform),
            "captions": captions,
            "text_mask": tf.range(k) < count,
        }

    pad = {
        "image": tf.zeros([image_size, image_size, 3], tf.float32),
        "captions": tf.fill([k], ""),
        "text_mask": tf.zeros([k], tf.bool),
    }

    def tokenize(batch):
        batch = dict(batch)
        batch["text"] = tf_tokenize(batch.pop("captions"), context_length, tokenizer)
        return batch

    def build() -> tf.data.Dataset:
        ds = builders.read_host_slice(builder, split, shard, decoders={image_key: tfds.decode.SkipDecoding()})
        ds = ds.map(no_autograph(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = padding.pad_and_batch(ds, shard, pad)
        return ds.map(
            no_autograph(tokenize), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).prefetch(2)

    return padding.PaddedDataset(
        build, shard, name=name_or_source, split=split, captions_per_image=k, caption_key=caption_key
    )
