"""Small on-disk datasets for tests and benchmarks: img2dataset-style TFRecord and webdataset tar shards
(optionally with corrupt records, or damaged files), caption folders, class folders, and a per-process
cached tiny `clip_synthetic` build."""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth-ish random uint8 RGB image (gradients plus noise, so JPEG sizes are realistic)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3) + rng.uniform(-1, 1, size=3) * (x[..., None] + y[..., None]) / 4
    return np.clip(base + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": quality} if fmt == "jpeg" else {}))
    return buffer.getvalue()


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def write_caption_shards(
    directory: str,
    num_examples: int,
    num_shards: int,
    *,
    image_size: tuple[int, int] = (40, 48),
    corrupt: dict[int, str] | None = None,
    seed: int = 0,
) -> list[str]:
    """img2dataset-layout shards `{shard:05d}.tfrecord` with "key", "jpg", "txt" and metadata features.

    Example i has caption "caption {i}" (so tests can tell examples apart from their tokens). `corrupt`
    maps example indices to a defect: "truncated_jpeg", "empty_caption", "blank_caption" (whitespace),
    "missing_caption" (no "txt" feature) or "not_an_image". Examples go round-robin over the shards.
    """
    corrupt = corrupt or {}
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [os.path.join(directory, f"{s:05d}.tfrecord") for s in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    height, width = image_size
    for i in range(num_examples):
        defect = corrupt.get(i)
        if defect not in (None, *_DEFECTS):
            raise ValueError(f"unknown defect {defect!r}")
        jpeg, caption = _example(rng, i, image_size, defect)
        feature = {
            "key": _bytes_feature(f"{i:09d}".encode()),
            "jpg": _bytes_feature(jpeg),
            # img2dataset's metadata columns ride along; the reader ignores them.
            "url": _bytes_feature(f"https://example.com/{i}.jpg".encode()),
            "width": _int_feature(width),
            "height": _int_feature(height),
            "status": _bytes_feature(b"success"),
        }
        if defect != "missing_caption":
            feature["txt"] = _bytes_feature(caption.encode())
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return paths


_DEFECTS = ("truncated_jpeg", "not_an_image", "empty_caption", "blank_caption", "missing_caption")


def _example(
    rng: np.random.Generator, i: int, image_size: tuple[int, int], defect: str | None
) -> tuple[bytes, str]:
    """The JPEG and caption ("caption {i}") of test example i, with `defect` applied to either."""
    if defect is not None and defect not in _DEFECTS + ("missing_image", "bad_json"):
        raise ValueError(f"unknown defect {defect!r}")
    jpeg = encode_image(random_image(rng, *image_size))
    caption = f"caption {i}"
    if defect == "truncated_jpeg":
        jpeg = jpeg[: len(jpeg) // 2]
    elif defect == "not_an_image":
        jpeg = b"this is not an image"
    elif defect == "empty_caption":
        caption = ""
    elif defect == "blank_caption":
        caption = "  \n "
    return jpeg, caption


def webdataset_uid(i: int) -> str:
    """The 32-hex-digit DataComp-style uid in the .json of test example i."""
    return f"{i:032x}"


def write_webdataset_shards(
    directory: str,
    num_examples: int,
    num_shards: int,
    *,
    image_size: tuple[int, int] = (40, 48),
    corrupt: dict[int, str] | None = None,
    seed: int = 0,
) -> list[str]:
    """img2dataset's webdataset layout: `{shard:05d}.tar` of `{i:09d}.jpg`, `.txt` ("caption {i}") and
    `.json` ({"uid", "i", "width", "height", "status"}), examples in order over the shards (ceil(n / shards)
    per shard; `clip_jax.data.write_webdataset.write_shards`). `corrupt` maps example indices to a defect
    of `write_caption_shards`, or "missing_image" (no .jpg) or "bad_json" (.json is not JSON)."""
    from clip_jax.data.write_webdataset import write_shards

    corrupt = corrupt or {}
    rng = np.random.default_rng(seed)
    height, width = image_size

    def samples():
        for i in range(num_examples):
            defect = corrupt.get(i)
            jpeg, caption = _example(rng, i, image_size, defect)
            meta = {"uid": webdataset_uid(i), "i": i, "width": width, "height": height, "status": "success"}
            fields = {"jpg": jpeg, "txt": caption.encode(), "json": json.dumps(meta).encode()}
            if defect == "missing_image":
                del fields["jpg"]
            elif defect == "missing_caption":
                del fields["txt"]
            elif defect == "bad_json":
                fields["json"] = b'{"uid": '
            yield f"{i:09d}", fields

    return write_shards(samples(), directory, -(-num_examples // num_shards))


def damage_tar(path: str, sample: int, defect: str, member: int = 0) -> None:
    """Damage member `member` of sample `sample` (both counted from 0) of a webdataset shard, which makes
    it and everything after it unreadable.

    "truncate": the file ends in the middle of the member's data (an interrupted copy); "cut": the file
    ends just before the member, at a member boundary, where tarfile sees a normal end of archive;
    "bad_header": one byte of the member's header changes, which fails its checksum, and tarfile again
    stops there without an error.
    """
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    samples: dict[str, list[tarfile.TarInfo]] = {}
    for info in members:
        samples.setdefault(info.name.split(".")[0], []).append(info)
    info = list(samples.values())[sample][member]
    with open(path, "r+b") as f:
        if defect == "truncate":
            f.truncate(info.offset_data + info.size // 2)
        elif defect == "cut":
            f.truncate(info.offset)
        elif defect == "bad_header":
            f.seek(info.offset + 10)  # inside the name field
            (byte,) = f.read(1)
            f.seek(info.offset + 10)
            f.write(bytes([byte ^ 0x55]))
        else:
            raise ValueError(f"unknown defect {defect!r}")


def tfrecord_offsets(path: str) -> list[int]:
    """The byte offset of each record in an undamaged TFRecord file (uint64 length, its CRC, data, CRC)."""
    with open(path, "rb") as f:
        data = f.read()
    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        (length,) = struct.unpack("<Q", data[position : position + 8])
        position += 8 + 4 + length + 4
    return offsets


def damage_tfrecord(path: str, record: int, defect: str) -> None:
    """Damage record `record` of a TFRecord file, which makes it and every later record unreadable.

    "truncate": the file ends in the middle of the record's data (an interrupted copy or write);
    "bad_crc": one bit of the record's stored data CRC is flipped (the data itself is intact).
    """
    offsets = tfrecord_offsets(path)
    with open(path, "r+b") as f:
        f.seek(offsets[record])
        (length,) = struct.unpack("<Q", f.read(8))
        data_start = offsets[record] + 12
        if defect == "truncate":
            f.truncate(data_start + length // 2)
        elif defect == "bad_crc":
            f.seek(data_start + length)
            (crc,) = f.read(1)
            f.seek(data_start + length)
            f.write(bytes([crc ^ 1]))
        else:
            raise ValueError(f"unknown defect {defect!r}")


def write_caption_folder(
    directory: str, num_examples: int, *, image_size: tuple[int, int] = (40, 48)
) -> None:
    """img2dataset's "files" layout: `{shard:05d}/{key}.jpg` with `{key}.txt` ("caption {i}") beside it."""
    rng = np.random.default_rng(0)
    for i in range(num_examples):
        sub = os.path.join(directory, f"{i % 2:05d}")
        os.makedirs(sub, exist_ok=True)
        fmt, ext = ("png", ".png") if i % 3 == 0 else ("jpeg", ".jpg")
        with open(os.path.join(sub, f"{i:09d}{ext}"), "wb") as f:
            f.write(encode_image(random_image(rng, *image_size), fmt))
        with open(os.path.join(sub, f"{i:09d}.txt"), "w") as f:
            f.write(f"caption {i}")


def write_class_folder(directory: str, split: str, counts: dict[str, int], *, size: int = 24) -> None:
    """`tfds.ImageFolder` layout: `{directory}/{split}/{class}/{i}.jpg`."""
    rng = np.random.default_rng(1)
    for label, count in counts.items():
        sub = os.path.join(directory, split, label)
        os.makedirs(sub, exist_ok=True)
        for i in range(count):
            with open(os.path.join(sub, f"{i}.jpg"), "wb") as f:
                f.write(encode_image(random_image(rng, size, size + 4)))


@functools.lru_cache(maxsize=1)
def tiny_synthetic_data_dir() -> str:
    """A TFDS data_dir holding `clip_synthetic/tiny`, built once per process and deleted at exit."""
    from clip_jax.data import synthetic

    directory = tempfile.mkdtemp(prefix="clip_synthetic_tiny_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    synthetic.prepare_synthetic(directory, "tiny")
    return directory


def caption_ids(text: np.ndarray, num_examples: int, context_length: int) -> list[int]:
    """Map token rows back to i of "caption {i}" (the test shards' captions)."""
    from clip_jax.tokenizer import tokenize

    captions = [f"caption {i}" for i in range(num_examples)]
    table = {tuple(row): i for i, row in enumerate(tokenize(captions, context_length))}
    return [table[tuple(row)] for row in text]
