"""Input-pipeline throughput: images/s decoded, augmented, normalised and tokenized, on this machine.

    python benchmarks/bench_input_pipeline.py [--batches 30] [--data_dir DIR] [--quick]

Each row runs `clip_jax.data.make_train_iterator` (the trainer's exact input: decode, random resized crop
with bicubic resize, OpenAI normalisation, tokenization, batching, prefetch) and times `--batches`
batches after two warm-up batches, so pipeline construction and shuffle-buffer filling are excluded but
epoch boundaries inside the timed window are not. Rows:

  synthetic@32    clip_synthetic/default (64x64 PNG) at the 32 px the main job (configs/synthetic_tiny.py)
                  trains on
  synthetic@64    the same at their stored 64 px
  synthetic@224   the same upsampled to 224 px
  jpeg@224        img2dataset-style TFRecord shards of 320x256 JPEGs (q90), cropped and resized to 224 px

tf.data uses all cores (AUTOTUNE). Compare `images_per_s` with the train step's images/s to see which
one limits training. The synthetic dataset is built into --data_dir first if missing (timed separately).
Other processes compete for the cores: the table prints the 1-minute load average seen during the run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

ROWS = (
    # (name, source, image_size)
    ("synthetic@32", "synthetic", 32),
    ("synthetic@64", "synthetic", 64),
    ("synthetic@224", "synthetic", 224),
    ("jpeg@224", "tfrecord", 224),
)
JPEG_SIZE = (256, 320)  # height, width of the shard images, about what img2dataset keeps at 256 px


def _time_iterator(iterator, batches: int, batch_size: int) -> tuple[float, float]:
    """(images/s, ms/batch) over `batches` batches after two warm-up batches."""
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed, 1000 * elapsed / batches


def run(
    batches: int = 30,
    batch_size: int = 128,
    data_dir: str | None = None,
    rows=ROWS,
    num_jpegs: int = 2048,
) -> list[dict]:
    """Time each row; one dict per row (plus the synthetic build time when this call built it)."""
    from clip_jax.data import make_train_iterator, prepare_synthetic, testing

    results = []
    start = time.perf_counter()
    prepare_synthetic(data_dir, "default")
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as shards:
        if any(source == "tfrecord" for _, source, _ in rows):
            testing.write_caption_shards(shards, num_jpegs, 8, image_size=JPEG_SIZE)
        for name, source, image_size in rows:
            if source == "synthetic":
                config = {"source": "synthetic", "name": "default", "data_dir": data_dir}
            else:
                config = {"source": "tfrecord", "path": shards}
            iterator = make_train_iterator(
                config,
                global_batch_size=batch_size,
                image_size=image_size,
                context_length=77,
                seed=0,
                process_index=0,
                process_count=1,
            )
            images_per_s, ms_per_batch = _time_iterator(iterator, batches, batch_size)
            iterator.close()
            results.append(
                {
                    "input": name,
                    "image_size": image_size,
                    "batch": batch_size,
                    "batches": batches,
                    "images_per_s": round(images_per_s, 1),
                    "ms_per_batch": round(ms_per_batch, 1),
                    "cpu_cores": os.cpu_count(),
                    "load_avg": round(os.getloadavg()[0], 1),
                }
            )
    if build_s > 1.0:  # built now, not found prepared
        results.append({"input": "clip_synthetic/default build", "build_s": round(build_s, 1)})
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| input | image size | batch | images/s | ms/batch | cores | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "images_per_s" in r:
            lines.append(
                f"| {r['input']} | {r['image_size']} | {r['batch']} | {r['images_per_s']:.0f} | "
                f"{r['ms_per_batch']:.0f} | {r['cpu_cores']} | {r['load_avg']} |"
            )
    builds = [r for r in results if "build_s" in r]
    if builds:
        lines.append("")
        lines += [f"{r['input']}: {r['build_s']:.1f} s" for r in builds]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--data_dir", default=None, help="TFDS data dir for clip_synthetic (default: TFDS's)")
    parser.add_argument("--quick", action="store_true", help="5 batches of 32, 256 JPEGs (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        results = run(batches=5, batch_size=32, data_dir=args.data_dir, num_jpegs=256)
    else:
        results = run(batches=args.batches, batch_size=args.batch_size, data_dir=args.data_dir)
    print(markdown(results))


if __name__ == "__main__":
    main()
