"""Evaluation-input throughput: images/s of the exact (PIL) eval pipeline beside its tf.image fast path,
and open_clip's own loader (torchvision ImageFolder + open_clip's preprocess in a DataLoader) as reference.

    python benchmarks/bench_eval_pipeline.py [--images 512] [--quick]

The images are ImageNet-like JPEGs (500 x 375 and 375 x 500, q90) written once into an image folder; every
row reads the same files into 224 px normalised batches of 64 and is timed after its first batch (pipeline
construction and warm-up excluded). clip_jax's rows use `clip_jax.data.make_eval_dataset` (tf.data,
AUTOTUNE over all cores); open_clip's uses 2 DataLoader workers, one per core of the CI machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

BATCH = 64
SIZE = 224


def write_folder(directory: str, count: int) -> None:
    """`count` JPEGs of photo-like content in an image-folder layout (two classes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = (375, 500) if i % 2 else (500, 375)
        y, x = np.mgrid[0:h, 0:w] / 500.0
        base = np.stack([np.sin(9 * x + i), np.cos(7 * y), (x + y) % 1.0], -1)
        pixels = np.clip(255 * (0.8 * base + 0.2 * rng.random((h, w, 3))), 0, 255).astype(np.uint8)
        sub = os.path.join(directory, "val", f"class{i % 2}")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(sub, f"{i}.jpg"), quality=90)


def _time(batches) -> tuple[float, int]:
    """(seconds, images) over the batches after the first."""
    it = iter(batches)
    next(it)
    start, images = time.perf_counter(), 0
    for batch in it:
        images += int(batch["mask"].sum()) if "mask" in batch else len(batch["image"])
    return time.perf_counter() - start, images


def clip_jax_row(directory: str, preprocess: str) -> dict:
    from clip_jax.data import make_eval_dataset

    ds = make_eval_dataset(
        f"folder:{directory}", "val", batch_size=BATCH, image_size=SIZE, preprocess=preprocess
    )
    seconds, images = _time(ds)
    return {"name": f"clip_jax {preprocess}", "images_per_s": images / seconds, "images": images}


def open_clip_row(directory: str) -> dict:
    import open_clip
    import torch
    import torchvision

    transform = open_clip.image_transform(SIZE, is_train=False)
    dataset = torchvision.datasets.ImageFolder(os.path.join(directory, "val"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=2)

    def batches():
        for images, _ in loader:
            yield {"image": images}

    seconds, images = _time(batches())
    return {"name": "open_clip DataLoader (2 workers)", "images_per_s": images / seconds, "images": images}


def run(images: int = 512, quick: bool = False) -> list[dict]:
    """One dict per row, plus each clip_jax row's ratio to open_clip's loader."""
    import torchvision  # noqa: F401  (imported before tensorflow, which it otherwise crashes beside)

    if quick:
        images = 2 * BATCH + 8
    with tempfile.TemporaryDirectory() as directory:
        write_folder(directory, images)
        rows = [clip_jax_row(directory, "pil"), clip_jax_row(directory, "tf"), open_clip_row(directory)]
    reference = rows[-1]["images_per_s"]
    for row in rows:
        row["vs_open_clip"] = row["images_per_s"] / reference
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| pipeline | images/s | vs open_clip's loader |", "|---|---:|---:|"]
    lines += [f"| {r['name']} | {r['images_per_s']:.0f} | {r['vs_open_clip']:.2f}x |" for r in rows]
    return "\n".join(lines) + (
        "\n\nImageNet-like JPEGs (500x375, q90) to 224 px batches of 64. The PIL pipeline's batches equal "
        "open_clip's preprocess exactly (tests/test_eval_pipeline_exact.py); the tf path is within "
        "`clip_jax.preprocess.TF_EVAL_GAP` of it (docs/preprocessing.md)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(to_markdown(run(args.images, args.quick)))


if __name__ == "__main__":
    main()
