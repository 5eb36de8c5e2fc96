"""Preparing the evaluation datasets (clip_jax.eval.prepare) from tiny archives in the real formats, and the
eval CLIs' one-line "no data" error before any weights load.

The archives hold a few generated images named and laid out as the real downloads are, so TFDS's own
builders prepare them; the URL-hosted ones get TFDS checksums of the fake files (the real check, fed the
fake archive's true size and sha256), since the shipped checksums are those of the real downloads.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.eval import metadata, prepare
from clip_jax.eval.common import DataConfig
from clip_jax.eval.datasets import check_available, check_image_folder, eval_dataset

IMAGE_SIZE = 32


def _image_bytes(seed: int, fmt: str = "JPEG", size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _run_prepare(argv: list[str]) -> int:
    return run_cli(prepare.main, prepare.PROG, argv)


def _first_batch(config: DataConfig) -> dict:
    return next(iter(eval_dataset(config, IMAGE_SIZE)))


def test_imagenet2012_from_val_and_train_tars(tmp_path, capsys):
    """ILSVRC2012_img_val.tar (flat JPEGs, labelled by TFDS's validation_labels.txt in sorted-name order)
    and ILSVRC2012_img_train.tar (one tar per synset) in the manual dir become imagenet2012's validation
    and train splits, which the eval data factory reads with the right labels."""
    data_dir, manual = tmp_path / "tfds", tmp_path / "tfds" / "downloads" / "manual"
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": _image_bytes(i) for i in range(1, 4)}
    _tar(manual / "ILSVRC2012_img_val.tar", val)
    synsets = ("n01440764", "n01443537")
    per_synset = {
        f"{s}.tar": _tar(tmp_path / f"{s}.tar", {f"{s}_{j}.JPEG": _image_bytes(10 * k + j) for j in range(2)})
        for k, s in enumerate(synsets)
    }
    _tar(manual / "ILSVRC2012_img_train.tar", {n: p.read_bytes() for n, p in per_synset.items()})

    assert _run_prepare(["imagenet1k", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "imagenet1k: prepared, train 4 examples, validation 3 examples" in out

    check_available("imagenet1k", str(data_dir), splits=["validation", "train"])
    wnids = metadata.imagenet_wnids()
    # TFDS's validation labels, first three lines: the labels of val images 1..3.
    expected = [wnids.index(w) for w in ("n01751748", "n09193705", "n02105855")]
    batch = _first_batch(DataConfig(dataset="imagenet1k", data_dir=str(data_dir), batch_size=4))
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    # TFDS stores examples in the order of a hash of their keys, so compare as sets of labels.
    assert sorted(np.asarray(batch["label"])[np.asarray(batch["mask"])].tolist()) == sorted(expected)
    train = _first_batch(
        DataConfig(dataset="imagenet1k", split="train", data_dir=str(data_dir), batch_size=4)
    )
    assert sorted(np.asarray(train["label"]).tolist()) == [0, 0, 1, 1]  # n01440764, n01443537: classes 0, 1

    # Prepared once: a second run only reports it.
    assert _run_prepare(["imagenet2012", "--data-dir", str(data_dir)]) == 0


def test_imagenet2012_without_train_tar_has_no_train_split(tmp_path, capsys):
    """The train tar is optional: without it the validation split is prepared, and a linear probe's
    train split is refused in one line that says how to add it."""
    data_dir, manual = tmp_path / "tfds", tmp_path / "tfds" / "downloads" / "manual"
    _tar(manual / "ILSVRC2012_img_val.tar", {"ILSVRC2012_val_00000001.JPEG": _image_bytes(0)})
    assert _run_prepare(["imagenet2012", "--data-dir", str(data_dir)]) == 0
    assert "imagenet2012: prepared, validation 1 examples" in capsys.readouterr().out
    check_available("imagenet2012", str(data_dir))
    with pytest.raises(
        UserError, match=r"has splits \['validation'\], not 'train'; .* delete \S+/imagenet2012 "
    ):
        check_available("imagenet1k", str(data_dir), splits=[None, "train"])


def test_imagenet2012_missing_archive_is_one_line(tmp_path, capsys):
    """No ILSVRC2012_img_val.tar: one line naming the file, where to get it and the folder to put it in."""
    data_dir = tmp_path / "tfds"
    assert _run_prepare(["imagenet2012", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    manual = data_dir / "downloads" / "manual"
    assert err.count("\n") == 0
    assert err.startswith(f"{prepare.PROG}: error: imagenet2012: ILSVRC2012_img_val.tar")
    assert f"not in {manual}" in err and "image-net.org" in err and "--manual-dir" in err


def _url_archive(name: str, folder: Path) -> tuple[Path, dict[str, int]]:
    """A tiny archive of URL-hosted dataset `name` in its real layout, and the label (ImageNet index) of
    each of its images' classes."""
    wnids = metadata.imagenet_wnids()
    if name == "imagenet_v2":  # <class index>/<n>.jpeg under the variant's top folder, gzipped
        top = "imagenetv2-matched-frequency-format-val"
        members = {f"{top}/{c}/{j}.jpeg": _image_bytes(c + j) for c in (3, 7) for j in range(2)}
        return _tar(folder / "imagenetv2-matched-frequency.tar.gz", members, "w:gz"), {"3": 3, "7": 7}
    if name in ("imagenet_r", "imagenet_a"):  # imagenet-r/<wnid>/<file>.jpg (plus a README in -a)
        top = name.replace("_", "-")
        synsets = metadata.subset_wnids(name)[:2]
        members = {f"{top}/{s}/{s}_{j}.jpg": _image_bytes(j) for s in synsets for j in range(2)}
        members[f"{top}/README.txt"] = b"not an image"
        return _tar(folder / f"{top}.tar", members), {s: wnids.index(s) for s in synsets}
    assert name == "imagenet_sketch"  # sketch/<wnid>/<file>.JPEG in a zip
    synsets = wnids[5:7]
    members = {f"sketch/{s}/sketch_{j}.JPEG": _image_bytes(j) for s in synsets for j in range(2)}
    return _zip(folder / "ImageNet-Sketch.zip", members), {s: wnids.index(s) for s in synsets}


def _accept_checksums(monkeypatch, name: str, archive: Path) -> None:
    """Give TFDS the fake archive's own size and sha256 under the real URL (the check still runs)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    cls = type(tfds.builder(name, data_dir=str(archive.parent)))
    infos = dict(cls.url_infos)
    url = next(u for u, i in infos.items() if i.filename == archive.name)
    infos[url] = checksums.compute_url_info(archive)
    monkeypatch.setattr(cls, "url_infos", infos)


@pytest.mark.parametrize(
    "registered, name",
    [
        ("imagenetv2", "imagenet_v2"),
        ("imagenet-r", "imagenet_r"),
        ("imagenet-a", "imagenet_a"),
        ("imagenet_sketch", "imagenet_sketch"),
    ],
)
def test_url_datasets_from_their_archives_offline(tmp_path, monkeypatch, capsys, registered, name):
    """An archive TFDS would download, put in the manual dir under its TFDS file name, is prepared with no
    network (no --download) and read through the eval data factory with ImageNet-1k labels."""
    data_dir = tmp_path / "tfds"
    archive, labels = _url_archive(name, data_dir / "downloads" / "manual")
    _accept_checksums(monkeypatch, name, archive)

    assert _run_prepare([name, "--data-dir", str(data_dir)]) == 0, capsys.readouterr().err
    assert f"{name}: prepared, test 4 examples" in capsys.readouterr().out
    check_available(registered, str(data_dir))
    batch = _first_batch(DataConfig(dataset=registered, data_dir=str(data_dir), batch_size=4))
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert sorted(np.asarray(batch["label"]).tolist()) == sorted(2 * list(labels.values()))


def test_url_dataset_missing_or_foreign_archive(tmp_path, capsys):
    """No archive: one line naming its file, URL and size and the manual dir; an archive that is not the
    real download (TFDS's shipped checksums): one line saying so, not TFDS's multi-line report."""
    data_dir = tmp_path / "tfds"
    manual = data_dir / "downloads" / "manual"
    assert _run_prepare(["imagenet-r", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert (
        "imagenet-r: imagenet-r.tar (from https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (2.2 GB))"
        in err
    )
    assert f"not in {manual}" in err and "--download" in err

    _url_archive("imagenet_r", manual)
    assert _run_prepare(["imagenet_r", "--data-dir", str(data_dir)]) == 2
    # Above the error: TFDS's progress bars (kept: a real archive takes minutes to hours to prepare).
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"{prepare.PROG}: error: imagenet_r: an archive in {manual} is not the file TFDS knows"
    )


def test_recipes_use_tfds_file_names():
    """Every URL-hosted archive that prepare names is a file name in that builder's TFDS checksums, so a
    TFDS upgrade that renames one fails here rather than in a user's prepare."""
    import tensorflow_datasets as tfds

    for name, recipe in prepare.RECIPES.items():
        if recipe.manual_only:
            continue
        filenames = {i.filename for i in type(tfds.builder(name)).url_infos.values()}
        for archive in recipe.archives:
            assert archive.filename in filenames, (name, archive.filename)


def _objectnet_zip(path: Path, password: str | None) -> Path:
    """objectnet-1.0.zip's layout: objectnet-1.0/images/<class folder>/<hash>.png, plus mappings/."""
    members = {
        "objectnet-1.0/images/alarm_clock/0a1b.png": _image_bytes(1, "PNG", (48, 40)),
        "objectnet-1.0/images/alarm_clock/0a1c.png": _image_bytes(2, "PNG", (48, 40)),
        "objectnet-1.0/images/backpack/0b2d.png": _image_bytes(3, "PNG", (40, 48)),
        "objectnet-1.0/mappings/folder_to_objectnet_label.json": b"{}",
    }
    if password is None:
        return _zip(path, members)
    staging = path.parent / "staging"
    for name, data in members.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    import subprocess

    subprocess.run(["zip", "-q", "-r", "-P", password, str(path), "objectnet-1.0"], cwd=staging, check=True)
    return path


@pytest.mark.parametrize("kind", ["plain", "encrypted", "encrypted_without_unzip"])
def test_objectnet_unpacked_from_its_zip(tmp_path, monkeypatch, capsys, kind):
    """objectnet-1.0.zip (password-protected, as downloaded) from the manual dir is unpacked into
    --objectnet-dir, by unzip or else Python's zipfile, and then holds images/<class>/ and is read with
    the classes' label indices."""
    from clip_jax.data import objectnet
    from clip_jax.data.objectnet import OBJECTNET_PASSWORD

    encrypted = kind != "plain"
    if encrypted and shutil.which("zip") is None:
        pytest.skip("no zip command to make a password-protected archive")
    manual = tmp_path / "downloads"
    manual.mkdir()
    _objectnet_zip(manual / "objectnet-1.0.zip", OBJECTNET_PASSWORD if encrypted else None)
    if kind == "encrypted_without_unzip":
        monkeypatch.setattr(objectnet.shutil, "which", lambda name: None)
    dest = tmp_path / "objectnet-1.0"
    argv = ["objectnet", "--objectnet-dir", str(dest), "--manual-dir", str(manual)]
    assert _run_prepare(argv) == 0, capsys.readouterr().err
    assert "objectnet: 2 of CLIP's 113 classes" in capsys.readouterr().out
    assert (dest / "images" / "backpack" / "0b2d.png").is_file()
    assert not (tmp_path / "objectnet-1.0.partial").exists()

    check_available("objectnet", objectnet_dir=str(dest))
    batch = next(
        iter(eval_dataset(DataConfig(dataset="objectnet", objectnet_dir=str(dest), batch_size=4), 32))
    )
    folders = [c["folder"] for c in metadata.objectnet_classes()]
    expected = sorted([folders.index("alarm_clock")] * 2 + [folders.index("backpack")])
    assert sorted(np.asarray(batch["label"])[np.asarray(batch["mask"]) == 1].tolist()) == expected


def test_objectnet_errors_name_the_archive_and_folder(tmp_path, capsys):
    assert (
        _run_prepare(["objectnet", "--objectnet-dir", str(tmp_path / "on"), "--manual-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert f"objectnet-1.0.zip not in {tmp_path}" in err and "objectnet.dev" in err
    with pytest.raises(UserError, match=r"pass --objectnet-dir"):
        check_available("objectnet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no class folders .*alarm_clock"):
        check_available("objectnet", objectnet_dir=str(tmp_path / "empty"))


def test_image_folder_check(tmp_path, capsys):
    """A class-per-folder tree <root>/<split>/<class>/<image> passes; a flat or missing one is one line."""
    root = tmp_path / "pets"
    for split, cls, j in (("test", "cat", 0), ("test", "dog", 1), ("train", "cat", 2)):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        (root / split / cls / f"{j}.jpg").write_bytes(_image_bytes(j))
    assert check_image_folder(root) == {"test": 2, "train": 1}
    assert _run_prepare([f"folder:{root}"]) == 0
    assert "split test: 2 classes" in capsys.readouterr().out
    check_available(f"folder:{root}", splits=["test"])
    with pytest.raises(UserError, match=r"has splits \['test', 'train'\], not 'val'"):
        check_available(f"folder:{root}", splits=["val"])
    with pytest.raises(UserError, match="no <split>/<class>/ folders"):
        check_image_folder(root / "test" / "cat")
    assert _run_prepare([f"folder:{tmp_path / 'nowhere'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_available_names_every_unprepared_dataset(tmp_path):
    """The robustness suite on an empty data dir: one line naming each missing set and one command."""
    empty = str(tmp_path / "empty")
    with pytest.raises(UserError) as e:
        check_available(["imagenet1k", "imagenetv2", "imagenet-r", "clip_synthetic"], empty)
    message = str(e.value)
    assert "\n" not in message
    assert f"imagenet1k, imagenetv2, imagenet-r not prepared in the TFDS data dir {empty}" in message
    assert f"python -m clip_jax.eval.prepare imagenet1k imagenetv2 imagenet-r --data-dir {empty}" in message
    with pytest.raises(UserError, match="unknown dataset 'no_such_set'"):
        check_available("no_such_set", empty)


@pytest.mark.parametrize(
    "tool, argv",
    [
        ("zeroshot", ["--dataset", "imagenet2012"]),
        ("robustness", []),
        ("linear_probe", ["--dataset", "imagenet1k"]),
    ],
)
def test_eval_cli_without_data_stops_before_loading_weights(tmp_path, monkeypatch, capsys, tool, argv):
    """`python -m clip_jax.eval.<tool> ... --data-dir EMPTY --weights <file>`: exit status 2 with one line
    naming the dataset, the data dir looked at and the prepare command; the weights are never opened."""
    import importlib

    import clip_jax.weights

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the data was checked")

    monkeypatch.setattr(clip_jax.weights, "load_pretrained", no_loading)
    module = importlib.import_module(f"clip_jax.eval.{tool}")
    empty = tmp_path / "empty"
    weights = tmp_path / "ViT-B-32.pt"
    weights.write_bytes(b"not read")
    full = [*argv, "--data-dir", str(empty), "--model", "ViT-B-32-quickgelu", "--weights", str(weights)]
    assert run_cli(module.main, f"clip_jax.eval.{tool}", full) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"not prepared in the TFDS data dir {empty}" in err
    assert "python -m clip_jax.eval.prepare imagenet" in err and "docs/evaluation_data.md" in err


def test_prepare_command_missing_archive_is_one_stderr_line(tmp_path):
    """The command as a user runs it: exit status 2 and one line on stderr (no TFDS warning above it),
    nothing written into the data dir."""
    import subprocess
    import sys

    data_dir = tmp_path / "tfds"
    done = subprocess.run(
        [sys.executable, "-m", "clip_jax.eval.prepare", "imagenet_a", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("clip_jax.eval.prepare: error: imagenet_a: imagenet-a.tar")
    assert not data_dir.exists()
