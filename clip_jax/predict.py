"""Zero-shot prediction for one image, as in OpenAI CLIP's README example.

    python -m clip_jax.predict --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --image dog.jpg --labels "a diagram,a dog,a cat"
    python -m clip_jax.predict --checkpoint runs/synthetic_tiny --image dog.png --labels "a circle,a square"

`--checkpoint` (the same flag as `--weights`) takes a training run's workdir, its checkpoints/ or a step
folder: the newest complete step, the model read from the workdir's config.json.

Prints the probability of each label: softmax over labels of exp(logit_scale) * cos(image, text)
(exp(logit_scale) is 100 for OpenAI's trained models); for a model with a logit bias (SigLIP), each label's
own sigmoid(exp(logit_scale) * cos + bias), as SigLIP was trained.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.inputs import model_inputs
from clip_jax.models.clip import CLIP, label_probabilities
from clip_jax.models.config import get_model_config
from clip_jax.preprocess import EvalTransform, load_image, preprocess_image
from clip_jax.tokenizer import tokenize
from clip_jax.weights import load_pretrained


def label_probs(
    model: CLIP,
    params: dict,
    images: np.ndarray,
    labels: Sequence[str],
    tokenizer: Callable[[list[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """float32 [N, len(labels)]: per image, the softmax over labels of the scaled cosine similarities, or
    with a logit bias (SigLIP) the sigmoid of each (`clip_jax.models.label_probabilities`).

    `tokenizer` (texts -> ids [T, L]) defaults to CLIP's BPE; a SigLIP model needs its checkpoint's
    (`clip_jax.siglip_tokenizer.find_siglip_tokenizer`)."""
    if tokenizer is None:
        tokens = tokenize(list(labels), context_length=model.cfg.text.context_length)
    else:
        tokens = tokenizer(list(labels))
    return np.asarray(_label_probs(model, params, jnp.asarray(images), jnp.asarray(tokens)))


@functools.partial(jax.jit, static_argnums=0)
def _label_probs(model: CLIP, params: dict, images: jax.Array, tokens: jax.Array) -> jax.Array:
    img, txt, scale, *bias = model.apply({"params": params}, images, tokens)
    return label_probabilities(img, txt, scale, bias[0] if bias else None)


def predict(
    model: CLIP,
    params: dict,
    image: str | os.PathLike,
    labels: Sequence[str],
    tokenizer: Callable[[list[str]], np.ndarray] | None = None,
    transform: EvalTransform | None = None,
) -> np.ndarray:
    """Label probabilities [len(labels)] for one image file, in the model's eval `transform` (default: its
    config family's, `clip_jax.inputs.model_inputs`)."""
    transform = transform or model_inputs(model.cfg).transform
    pixels = preprocess_image(load_image(image), model.cfg.vision.image_size, transform)
    return label_probs(model, params, pixels[None], labels, tokenizer)[0]


def parse_labels(text: str) -> list[str]:
    """The labels of `--labels`: comma-separated, blanks dropped; ValueError if none is left."""
    labels = [s.strip() for s in text.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels {text!r} holds no label; pass them comma-separated, e.g. 'a dog,a cat'")
    return labels


def main(argv: Sequence[str] | None = None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="model name, e.g. ViT-B-32-quickgelu (default: read from the checkpoint or inferred)",
    )
    parser.add_argument(
        "--weights",
        "--checkpoint",
        required=True,
        help="checkpoint file or directory (any supported format), or a training run: its workdir, "
        "checkpoints/ or a step folder (the model is read from the workdir's config.json)",
    )
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--labels", required=True, help="comma-separated labels, e.g. 'a dog,a cat'")
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation of an open_clip checkpoint whose model is not named",
    )
    from clip_jax.eval.cli import add_transform_arg, chosen_inputs

    add_transform_arg(parser)
    args = parser.parse_args(argv)
    labels = parse_labels(args.labels)
    # The image and the model name are checked before the weights are read: a typo costs no load.
    try:
        load_image(args.image)
    except OSError as e:  # missing or unreadable; a file that is not an image is a ValueError naming it
        raise UserError(f"--image {args.image}: {e.strerror or e}") from e
    if args.model is not None:
        try:
            get_model_config(args.model)
        except ValueError as e:
            raise UserError(f"--model: {e}") from None
    model, params = load_pretrained(args.model, args.weights, quick_gelu=args.quick_gelu)
    # A SigLIP checkpoint ships its vocabulary (spiece.model) and its transform beside its weights.
    inputs = chosen_inputs(args, model_inputs(model.cfg, args.weights))
    probs = predict(model, params, args.image, labels, inputs.tokenizer, inputs.transform)
    width = max(len(label) for label in labels)
    print(f"Label probs for {args.image}:")
    for label, p in zip(labels, probs, strict=True):
        print(f"  {label:<{width}}  {p:.6f}")
    return probs


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "clip_jax.predict"))
