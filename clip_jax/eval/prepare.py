"""Prepare the evaluation datasets from their downloaded archives, once, before any evaluation reads them.

    python -m clip_jax.eval.prepare imagenet2012 --data-dir ~/tensorflow_datasets
    python -m clip_jax.eval.prepare imagenet_v2 imagenet_r imagenet_a imagenet_sketch --data-dir ~/tensorflow_datasets
    python -m clip_jax.eval.prepare objectnet --objectnet-dir ~/objectnet-1.0 --manual-dir ~/Downloads
    python -m clip_jax.eval.prepare folder:~/my_images

TFDS datasets are prepared by TFDS's own builders (`download_and_prepare`) from the archives in the manual
dir (default `<data-dir>/downloads/manual`, TFDS's own default), so nothing is downloaded unless
`--download` allows it; TFDS checks each URL-hosted archive's size and sha256 against its checksums.
ObjectNet is unpacked into --objectnet-dir; an image folder is checked. A missing archive is one line
naming the file, where to get it and where to put it. The how-to for every dataset: docs/evaluation_data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.eval import metadata
from clip_jax.eval.datasets import (
    PREPARE_DOC,
    check_image_folder,
    check_objectnet_dir,
    image_folder_path,
    tfds_builder,
    tfds_data_dir,
)

PROG = "clip_jax.eval.prepare"
IMAGENET_SOURCE = "https://image-net.org/download-images (free registration)"


@dataclasses.dataclass(frozen=True)
class Archive:
    """A file a builder reads from the manual dir. `split` set: optional, it only adds that split."""

    filename: str
    source: str
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The archives of a TFDS dataset; `manual_only`: TFDS cannot download it (ImageNet's registration)."""

    archives: tuple[Archive, ...]
    manual_only: bool = False


def _url(name: str) -> Archive:
    """An archive TFDS downloads from a URL: its manual-dir file name is the last column of TFDS's
    checksums (`url_infos`), which a test keeps equal to these names."""
    return Archive(name, "the URL in TFDS's checksums (--download fetches it)")


# The evaluation datasets the README names. The file names are TFDS's: a file of another name (or another
# version of the archive) is not recognised.
RECIPES: dict[str, Recipe] = {
    "imagenet2012": Recipe(
        (
            Archive("ILSVRC2012_img_val.tar", IMAGENET_SOURCE),
            Archive("ILSVRC2012_img_train.tar", IMAGENET_SOURCE, split="train"),
        ),
        manual_only=True,
    ),
    "imagenet_v2": Recipe((_url("imagenetv2-matched-frequency.tar.gz"),)),
    "imagenet_r": Recipe((_url("imagenet-r.tar"),)),
    "imagenet_a": Recipe((_url("imagenet-a.tar"),)),
    "imagenet_sketch": Recipe((_url("ImageNet-Sketch.zip"),)),
    "cifar10": Recipe((_url("cifar-10-binary.tar.gz"),)),
    "cifar100": Recipe((_url("cifar-100-binary.tar.gz"),)),
    "coco_captions": Recipe(
        tuple(
            _url(f)
            for f in (
                "train2014.zip",
                "val2014.zip",
                "test2014.zip",
                "test2015.zip",
                "annotations_trainval2014.zip",
                "image_info_test2014.zip",
                "image_info_test2015.zip",
                "caption_datasets.zip",
            )
        )
    ),
}


def tfds_name(name: str) -> str:
    """The TFDS name of a registered evaluation name (imagenet1k -> imagenet2012), else `name`."""
    try:
        spec = metadata.get_dataset(name)
    except ValueError:
        return name
    return spec.tfds_name or name


def _archive_sources(builder: Any) -> dict[str, str]:
    """filename -> "URL, size" from TFDS's checksums, for the error that names a missing archive."""
    infos = type(builder).url_infos or {}
    return {i.filename: f"{url} ({i.size / 1e9:.1f} GB)" for url, i in infos.items() if i.filename}


def missing_archives(builder: Any, recipe: Recipe, manual_dir: Path) -> list[Archive]:
    """The archives a dataset needs that are not in `manual_dir` (optional ones never count)."""
    return [a for a in recipe.archives if a.split is None and not (manual_dir / a.filename).is_file()]


def prepare_tfds(
    name: str, data_dir: str | None = None, manual_dir: str | None = None, *, download: bool = False
) -> dict[str, int]:
    """Prepare a TFDS dataset into `data_dir` from the archives in `manual_dir` (TFDS downloads the
    missing ones only when `download`); {split: examples}. Already prepared: nothing is done."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    builder, prepared = tfds_builder(tfds_name(name), data_dir)
    root = tfds_data_dir(data_dir)
    manual = Path(manual_dir).expanduser() if manual_dir else Path(root) / "downloads" / "manual"
    if not prepared:
        recipe = RECIPES.get(builder.name)
        if recipe is None and not download:
            raise UserError(
                f"{name}: prepare knows no archives of {builder.name}; pass --download to let TFDS "
                f"download it (needs internet), see {PREPARE_DOC}"
            )
        missing = missing_archives(builder, recipe, manual) if recipe else []
        if missing and (recipe.manual_only or not download):
            sources = _archive_sources(builder)
            files = ", ".join(f"{a.filename} (from {sources.get(a.filename, a.source)})" for a in missing)
            alternative = "" if recipe.manual_only else ", or pass --download where there is internet"
            raise UserError(
                f"{name}: {files} not in {manual}: put it there or pass --manual-dir to the folder "
                f"holding it{alternative} ({PREPARE_DOC})"
            )
        # No GCS look-up without --download: offline it would only wait for a timeout.
        config = tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=download)
        try:
            builder.download_and_prepare(download_config=config)
        except NonMatchingChecksumError as e:
            raise UserError(
                f"{name}: an archive in {manual} is not the file TFDS knows (its size or sha256 differs): "
                f"download it again from the original source ({PREPARE_DOC}); TFDS: {str(e).split(chr(10))[0]}"
            ) from e
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def prepare_objectnet(objectnet_dir: str | None, manual_dir: str | None, data_dir: str | None = None) -> int:
    """Unpack objectnet-1.0.zip from the manual dir into `objectnet_dir` unless it already holds the
    class folders; the number of CLIP's 113 classes found there."""
    from clip_jax.data.objectnet import OBJECTNET_ARCHIVE, OBJECTNET_URL, unpack_objectnet

    if not objectnet_dir:
        raise UserError("objectnet: pass --objectnet-dir, the folder to unpack objectnet-1.0.zip into")
    dest = Path(objectnet_dir).expanduser()
    if dest.is_dir() and any(dest.iterdir()):
        return check_objectnet_dir(str(dest))
    manual = (
        Path(manual_dir).expanduser()
        if manual_dir
        else Path(tfds_data_dir(data_dir)) / "downloads" / "manual"
    )
    archive = manual / OBJECTNET_ARCHIVE
    if not archive.is_file():
        raise UserError(
            f"objectnet: {OBJECTNET_ARCHIVE} not in {manual}: download it from {OBJECTNET_URL} "
            f"and put it there, or pass --manual-dir to the folder holding it ({PREPARE_DOC})"
        )
    print(f"objectnet: unpacking {archive} into {dest} ...", flush=True)
    unpack_objectnet(archive, dest)
    return check_objectnet_dir(str(dest))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Prepare evaluation datasets from their archives (docs/evaluation_data.md).",
    )
    parser.add_argument(
        "datasets",
        nargs="+",
        help="imagenet2012 (or imagenet1k), imagenet_v2, imagenet_r, imagenet_a, imagenet_sketch, cifar10, "
        "cifar100, coco_captions (any TFDS name), objectnet, or folder:<dir> (checked only)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--manual-dir",
        default=None,
        help="folder holding the archives (default: <data-dir>/downloads/manual)",
    )
    parser.add_argument(
        "--download", action="store_true", help="let TFDS download archives missing from the manual dir"
    )
    parser.add_argument("--objectnet-dir", default=None, help="where ObjectNet is (or is to be) unpacked")
    args = parser.parse_args(argv)

    for name in args.datasets:
        folder = image_folder_path(name) if name.startswith(("folder:", "image_folder:")) else None
        if folder is not None:
            splits = check_image_folder(folder)
            print(f"{name}: " + ", ".join(f"split {s}: {n} classes" for s, n in splits.items()))
        elif name == "objectnet":
            found = prepare_objectnet(args.objectnet_dir, args.manual_dir, args.data_dir)
            print(f"objectnet: {found} of CLIP's 113 classes in {args.objectnet_dir}")
        else:
            splits = prepare_tfds(name, args.data_dir, args.manual_dir, download=args.download)
            print(f"{name}: prepared, " + ", ".join(f"{s} {n} examples" for s, n in sorted(splits.items())))


if __name__ == "__main__":
    raise SystemExit(run_cli(main, PROG))
