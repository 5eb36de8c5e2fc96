"""TensorFlow ops that the input pipelines share: image decoding, tokenization inside tf.data, and
autograph-free map functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from clip_jax.tokenizer import tokenize

if TYPE_CHECKING:
    from clip_jax.preprocess import EvalTransform


def no_autograph(fn):
    """`fn` for tf.data without autograph: it has no Python control flow on tensors, and converting it
    would cost seconds of tracing for every epoch's pipeline."""
    return tf.autograph.experimental.do_not_convert(fn)


Tokenizer = Callable[[Sequence[str]], np.ndarray]


def _tokenize_batch(captions: np.ndarray, context_length: int, tokenizer: Tokenizer | None) -> np.ndarray:
    texts = [c.decode("utf-8", errors="replace") for c in captions.reshape(-1)]
    tokens = tokenize(texts, context_length) if tokenizer is None else np.asarray(tokenizer(texts), np.int32)
    return tokens.reshape(captions.shape + (context_length,))


def tf_tokenize(captions: tf.Tensor, context_length: int, tokenizer: Tokenizer | None = None) -> tf.Tensor:
    """Tokenize a string tensor of any shape inside tf.data: int32 [*shape, context_length].

    `tokenizer` (texts -> ids [N, context_length], the model's: `clip_jax.inputs`) defaults to CLIP's BPE.
    A tokenizer with an in-graph form (sentencepiece: `tokenize_ops.in_graph_tokenizer`) runs as TF ops,
    off the GIL; any other runs in Python in a tf.numpy_function."""
    from clip_jax.data.tokenize_ops import in_graph_tokenizer

    in_graph = in_graph_tokenizer(tokenizer, context_length) if tokenizer is not None else None
    if in_graph is not None:
        tokens = tf.reshape(
            in_graph(tf.reshape(captions, [-1])), tf.concat([tf.shape(captions), [context_length]], 0)
        )
    else:
        tokens = tf.numpy_function(
            lambda c: _tokenize_batch(c, context_length, tokenizer), [captions], tf.int32, stateful=False
        )
    tokens.set_shape(captions.shape.concatenate([context_length]))
    return tokens


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [H, W, 3]; raises on corrupt data (to be dropped)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


EVAL_PREPROCESS = ("pil", "tf")


def decode_image_like_pil(encoded: tf.Tensor) -> tf.Tensor:
    """`decode_image`, with JPEGs decoded by libjpeg's accurate integer DCT, as PIL decodes them.

    TF's default JPEG DCT is the fast one: up to 8 levels off PIL's pixels, which five times the mean
    gap of the tf eval path to open_clip's preprocess (measured in docs/preprocessing.md).
    """
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: decode_image(encoded),
    )


def eval_image(
    encoded: tf.Tensor, image_size: int, preprocess: str = "pil", transform: EvalTransform | None = None
) -> tf.Tensor:
    """Encoded image bytes -> float32 [S, S, 3], the model's eval transform (default OpenAI's).

    "pil": PIL decodes and transforms (`clip_jax.preprocess.preprocess_encoded` in a tf.numpy_function),
    bit-equal with open_clip's preprocess for every PIL mode (L, P, RGBA, CMYK JPEG, ...); parallel map
    calls overlap, as PIL releases the GIL while it decodes and resizes. "tf": tf.image decoding and
    `tf_eval_transform`, faster, within `clip_jax.preprocess.TF_EVAL_GAP` of it.
    """
    from clip_jax.preprocess import OPENAI_TRANSFORM, preprocess_encoded, tf_eval_transform

    transform = transform or OPENAI_TRANSFORM
    if transform.library == "tf":  # big_vision's pp, whatever `preprocess` says: TF decodes and resizes
        return tf_eval_transform(decode_image(encoded), image_size, transform)
    if preprocess == "tf":
        return tf_eval_transform(decode_image_like_pil(encoded), image_size, transform)
    if preprocess != "pil":
        raise ValueError(f"preprocess={preprocess!r}; choose from {EVAL_PREPROCESS}")
    image = tf.numpy_function(
        lambda data: preprocess_encoded(bytes(data), image_size, transform),
        [encoded],
        tf.float32,
        stateful=False,
    )
    image.set_shape([image_size, image_size, 3])
    return image
