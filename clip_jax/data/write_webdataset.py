"""Write webdataset tar shards: any samples (`write_shards`), and the embedded synthetic dataset.

    python -m clip_jax.data.write_webdataset --output_dir DIR [--config default] [--split train]

writes clip_synthetic's split as `DIR/{shard:05d}.tar` (the examples the TFDS build holds, from
`synthetic.generate_example`, so nothing needs building first) and `DIR/sizes.json`, open_clip's record of
each shard's sample count. Each sample is `{key}.png`, `{key}.txt` (the first of its three captions) and
`{key}.json` (all three captions, the labels, a DataComp-style 32-hex "uid"), so the README's
shards -> train -> eval path runs offline, and tests and the input benchmark write their shards with it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping

import tensorflow as tf

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.data import synthetic

SIZES_FILE = "sizes.json"  # open_clip's get_dataset_size reads {shard file name: samples} from it


def write_shards(
    samples: Iterable[tuple[str, Mapping[str, bytes]]], directory: str, samples_per_shard: int
) -> list[str]:
    """Write (key, {field: bytes}) samples as `directory/{shard:05d}.tar`, `samples_per_shard` per shard,
    members `{key}.{field}` in the order given, plus `sizes.json`; returns the shard paths.

    Members get a fixed time and mode, so the same samples give the same bytes. `directory` may be any
    path tf.io.gfile writes (local, gs://).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, not {samples_per_shard}")
    tf.io.gfile.makedirs(directory)
    paths: list[str] = []
    sizes: dict[str, int] = {}
    out: tf.io.gfile.GFile | None = None
    tar: tarfile.TarFile | None = None
    for i, (key, fields) in enumerate(samples):
        if i % samples_per_shard == 0:
            if out is not None:
                tar.close()
                out.close()
            paths.append(os.path.join(directory, f"{len(paths):05d}.tar"))
            out = tf.io.gfile.GFile(paths[-1], "wb")
            tar = tarfile.open(fileobj=out, mode="w")
            sizes[os.path.basename(paths[-1])] = 0
        for field, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        sizes[os.path.basename(paths[-1])] += 1
    if out is not None:
        tar.close()
        out.close()
    with tf.io.gfile.GFile(os.path.join(directory, SIZES_FILE), "w") as f:
        f.write(json.dumps(sizes, indent=1))
    return paths


def synthetic_uid(split: str, index: int) -> str:
    """A DataComp-style uid (32 hex digits) of example `index` of a clip_synthetic split."""
    return hashlib.md5(f"clip_synthetic/{split}/{index}".encode()).hexdigest()


def synthetic_samples(
    config: str = "default", split: str = "train"
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {"png", "txt", "json"}) for every example of a clip_synthetic split, in order."""
    builder_config = {c.name: c for c in synthetic.BUILDER_CONFIGS}[config]
    size = builder_config.image_size
    for index in range(builder_config.split_sizes[split]):
        example = synthetic.generate_example(split, index, size, builder_config.seed)
        image, captions = example.pop("image"), example.pop("captions")
        meta = {"uid": synthetic_uid(split, index), "width": size, "height": size, "captions": captions}
        meta.update(example)  # the labels: shape, color, size, position, texture, background
        yield (
            f"{index:09d}",
            {"png": image, "txt": captions[0].encode(), "json": json.dumps(meta).encode()},
        )


def write_synthetic(
    directory: str, config: str = "default", split: str = "train", samples_per_shard: int = 1000
) -> list[str]:
    """Write a clip_synthetic split as webdataset shards; returns their paths."""
    return write_shards(synthetic_samples(config, split), directory, samples_per_shard)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="where the shards go (local or gs://)")
    parser.add_argument("--config", default="default", choices=[c.name for c in synthetic.BUILDER_CONFIGS])
    parser.add_argument("--split", default="train", choices=list(synthetic.SPLITS))
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.samples_per_shard < 1:
        raise UserError(f"--samples_per_shard {args.samples_per_shard}: must be >= 1")
    start = time.perf_counter()
    try:
        paths = write_synthetic(args.output_dir, args.config, args.split, args.samples_per_shard)
    except (OSError, tf.errors.OpError) as e:  # tf.io.gfile's errors are not OSErrors
        raise UserError(f"--output_dir {args.output_dir}: cannot write the shards ({_reason(e)})") from e
    last = os.path.basename(paths[-1]).removesuffix(".tar")
    print(
        f"wrote {len(paths)} shards of clip_synthetic/{args.config} {args.split} in "
        f"{time.perf_counter() - start:.1f} s: --config.data.path='{args.output_dir}/{{00000..{last}}}.tar'"
    )


def _reason(error: Exception) -> str:
    return getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)


if __name__ == "__main__":
    sys.exit(run_cli(main, "clip_jax.data.write_webdataset"))
