"""How far apart SigLIP's eval transforms are on real photographs (issue 28 item 3).

    .venv/bin/python experiments/siglip_transforms.py [--size 224] [--model ViT-B-16-SigLIP]

The reference is big_vision's pp `resize(S)|value_range(-1, 1)`, written out here op for op as
big_vision/pp/ops_image.py get_resize and ops_general.py get_value_range compute it: the transform that
made SigLIP's published numbers. Against it: clip_jax's transforms (`clip_jax.preprocess.NAMED_TRANSFORMS`)
and HF's two image processors, SiglipImageProcessorPil (PIL bicubic) and SiglipImageProcessor (in
transformers 5 the torchvision backend). Every transform gets the same decoded uint8 pixels (scikit-image's
sample photographs), so the table measures resizing only. Columns: max and mean |difference| of the
normalised pixels, and the largest relative difference |f - f_ref| / |f_ref| of the image features of a
randomly initialised SigLIP (one forward per transform). The output is the table in docs/preprocessing.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# torch before tensorflow: imported the other way round, torchvision's import crashes the process here.
import torch  # noqa: F401, I001
import torchvision  # noqa: F401
import transformers


def photographs() -> dict[str, np.ndarray]:
    """scikit-image's sample photographs (uint8 RGB or grayscale), in several shapes and aspect ratios."""
    from skimage import data

    coffee = data.coffee()
    return {
        "astronaut 512x512": data.astronaut(),
        "coffee 400x600": coffee,
        "coffee portrait 600x400": np.ascontiguousarray(coffee.transpose(1, 0, 2)),
        "chelsea 300x451": data.chelsea(),
        "rocket 427x640": data.rocket(),
        "camera 512x512 gray": data.camera(),
        "chelsea small 100x151": data.chelsea()[::3, ::3].copy(),
    }


def big_vision_pp(image: np.ndarray, size: int) -> np.ndarray:
    """big_vision's `resize(size)|value_range(-1, 1)` as its pp ops compute it (after decode(channels=3))."""
    import tensorflow as tf

    x = tf.constant(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1))
    dtype = x.dtype  # get_resize: tf.image.resize, then clip to the dtype's range and cast back
    x = tf.image.resize(x, (size, size), method="bilinear", antialias=False)
    x = tf.cast(tf.clip_by_value(x, dtype.min, dtype.max), dtype)
    x = tf.cast(x, tf.float32)  # get_value_range(vmin=-1, vmax=1, in_min=0, in_max=255)
    x = (x - tf.constant(0, tf.float32)) / (tf.constant(255.0, tf.float32) - tf.constant(0, tf.float32))
    return (-1 + x * (1 - -1)).numpy()


def transforms(size: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from PIL import Image

    from clip_jax.preprocess import NAMED_TRANSFORMS, preprocess_image

    hf_pil = transformers.SiglipImageProcessorPil(size={"height": size, "width": size})
    hf_tv = transformers.SiglipImageProcessor(size={"height": size, "width": size})

    def hf(processor):
        return lambda a: processor(Image.fromarray(a), return_tensors="np")["pixel_values"][0].transpose(
            1, 2, 0
        )

    out = {
        f"clip_jax {name}": (lambda a, t=t: preprocess_image(a, size, t))
        for name, t in NAMED_TRANSFORMS.items()
        if name.startswith("siglip")
    }
    out["HF SiglipImageProcessorPil"] = hf(hf_pil)
    out["HF SiglipImageProcessor (torchvision)"] = hf(hf_tv)
    return out


def image_features(model_name: str, size: int, batch: np.ndarray) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from clip_jax.models import CLIP, get_model_config, random_params

    cfg = get_model_config(model_name)
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=size))
    model = CLIP(cfg)
    params = random_params(model, 0)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image))
    return np.asarray(encode(params, jnp.asarray(batch)), np.float64)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--model", default="ViT-B-16-SigLIP", help="named SigLIP config, randomly initialised"
    )
    args = parser.parse_args(argv)

    photos = photographs()
    reference = np.stack([big_vision_pp(a, args.size) for a in photos.values()])
    candidates = {
        name: np.stack([f(a) for a in photos.values()]) for name, f in transforms(args.size).items()
    }
    features = image_features(args.model, args.size, np.concatenate([reference, *candidates.values()]))
    n = len(photos)
    ref_features = features[:n]
    rows = []
    print(
        f"Against big_vision's `resize({args.size})|value_range(-1, 1)`, {n} photographs, features of a random {args.model}:\n"
    )
    print("| transform | max abs | mean abs | worst photo | feature rel. diff (max) |")
    print("|---|---:|---:|---|---:|")
    for i, (name, pixels) in enumerate(candidates.items(), start=1):
        diff = np.abs(pixels - reference)
        worst = list(photos)[int(diff.reshape(n, -1).max(axis=1).argmax())]
        f = features[i * n : (i + 1) * n]
        rel = np.linalg.norm(f - ref_features, axis=1) / np.linalg.norm(ref_features, axis=1)
        rows.append(
            {
                "transform": name,
                "max_abs": float(diff.max()),
                "mean_abs": float(diff.mean()),
                "feature_rel": float(rel.max()),
            }
        )
        print(f"| {name} | {diff.max():.4f} | {diff.mean():.5f} | {worst} | {rel.max():.2e} |")
    pil, tv = candidates["HF SiglipImageProcessorPil"], candidates["HF SiglipImageProcessor (torchvision)"]
    print(
        f"\nHF's torchvision backend against its PIL backend: max abs {np.abs(tv - pil).max():.4f}, mean abs {np.abs(tv - pil).mean():.5f}"
    )
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    return rows


if __name__ == "__main__":
    main()
