"""ObjectNet from its local folder (it is not in TFDS): images/<class folder>/<image>, preprocessed as
OpenAI's eval transform after cropping the 1-pixel red border that every ObjectNet image carries.

The download, objectnet-1.0.zip (https://objectnet.dev), is a large password-protected zip
holding objectnet-1.0/{images/<313 class folders>/*.png, mappings/, README...}; `unpack_objectnet` turns
it into the folder read here (docs/evaluation_data.md).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import zipfile
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
OBJECTNET_ARCHIVE = "objectnet-1.0.zip"
OBJECTNET_URL = "https://objectnet.dev/download.html"
# Published on the download page; it keeps the test set out of web crawls, not away from users.
OBJECTNET_PASSWORD = "objectnetisatestset"


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


def unpack_objectnet(archive: str | Path, dest: str | Path) -> Path:
    """Unpack objectnet-1.0.zip into `dest` (which then holds images/<class>/...) and return `dest`.

    The zip's top folder (objectnet-1.0/) is dropped so that `dest` is the root the evaluators take
    (--objectnet-dir). `unzip` is used when installed: Python's zipfile decrypts the password-protected
    members in pure Python, far slower than unzip on the full archive. Unpacks into a sibling folder first, so an
    interrupted run never leaves a half-filled `dest` that looks complete.
    """
    archive, dest = Path(archive).expanduser(), Path(dest).expanduser()
    if not archive.is_file():
        raise FileNotFoundError(
            f"ObjectNet archive {archive} not found: download {OBJECTNET_ARCHIVE} from {OBJECTNET_URL}"
        )
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty: pass an empty or new --objectnet-dir to unpack into")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if shutil.which("unzip"):
        cmd = ["unzip", "-q", "-P", OBJECTNET_PASSWORD, str(archive), "-d", str(partial)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode not in (0, 1):  # 1: warnings only (e.g. a member's odd timestamp)
            raise ValueError(f"unzip {archive} failed: {' '.join(done.stderr.split())[:300]}")
    else:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(partial, pwd=OBJECTNET_PASSWORD.encode())
        except (zipfile.BadZipFile, RuntimeError) as e:  # RuntimeError: a wrong password
            raise ValueError(f"{archive} is not a readable ObjectNet zip: {e}") from e
    tops = [p for p in partial.iterdir() if not p.name.startswith("__MACOSX")]
    root = tops[0] if len(tops) == 1 and (tops[0] / "images").is_dir() else partial
    if dest.exists():
        dest.rmdir()
    root.rename(dest)
    shutil.rmtree(partial, ignore_errors=True)
    return dest


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
