"""ObjectNet from its local folder (it is not in TFDS): images/<class folder>/<image>, preprocessed as
OpenAI's eval transform after cropping the 1-pixel red border that every ObjectNet image carries."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:
    from clip_jax.preprocess import EvalTransform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPEG", ".JPG", ".PNG")
# ObjectNet images carry a 1-pixel red border; the standard protocol crops 2 pixels off each side.
OBJECTNET_BORDER = 2


def objectnet_files(root: str | Path, folders: Sequence[str]) -> list[tuple[Path, int]]:
    """(image path, index in `folders`) of the images in the given class folders, sorted."""
    root = Path(root)
    images = root / "images" if (root / "images").is_dir() else root
    out = []
    for label, name in enumerate(folders):
        folder = images / name
        if folder.is_dir():
            out.extend((p, label) for p in sorted(folder.iterdir()) if p.suffix in IMAGE_SUFFIXES)
    if not out:
        raise FileNotFoundError(f"no ObjectNet class folders (e.g. {images / folders[0]}) found")
    return out


def _load_objectnet_image(path: Path, image_size: int, transform: EvalTransform | None) -> np.ndarray:
    from PIL import ImageOps

    from clip_jax.preprocess import OPENAI_TRANSFORM, load_image, preprocess_image

    image = load_image(path)
    image = ImageOps.crop(image.convert("RGB"), border=OBJECTNET_BORDER)
    return preprocess_image(image, image_size, transform or OPENAI_TRANSFORM)


def objectnet_dataset(
    root: str | Path,
    folders: Sequence[str],
    *,
    batch_size: int,
    image_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 8,
    transform: EvalTransform | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """ObjectNet batches {"image", "label" (index in `folders`), "mask"} from a local folder, in the
    model's eval `transform` (default OpenAI's).

    `folders` are the class folders to read, in label order (for CLIP's protocol, the 113 classes that
    overlap ImageNet, from `clip_jax.eval.metadata.objectnet_classes()`).

    `batch_size` is global, as in `clip_jax.data.make_eval_dataset`: each process reads every
    process_count-th file into batches of batch_size / process_count; all processes yield the same number
    of batches, the last ones padded with mask 0.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
    batch_size //= process_count
    files = objectnet_files(root, folders)
    mine = files[process_index::process_count]
    per_process = math.ceil(len(files) / process_count)
    num_batches = math.ceil(per_process / batch_size)
    with ThreadPoolExecutor(num_threads) as pool:
        for b in range(num_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            images = np.zeros((batch_size, image_size, image_size, 3), np.float32)
            labels = np.zeros(batch_size, np.int32)
            mask = np.zeros(batch_size, np.int32)
            for i, img in enumerate(
                pool.map(lambda f: _load_objectnet_image(f[0], image_size, transform), chunk)
            ):
                images[i] = img
                labels[i] = chunk[i][1]
                mask[i] = 1
            yield {"image": images, "label": labels, "mask": mask}
