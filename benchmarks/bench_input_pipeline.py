"""Input-pipeline throughput: images/s decoded, augmented, normalised and tokenized, on this machine.

    python benchmarks/bench_input_pipeline.py [--batches 30] [--repeats 1] [--rows A,B] [--data_dir DIR] [--quick]

Each row runs `clip_jax.data.make_train_iterator` (the trainer's exact input: decode, random resized crop
with bicubic resize, OpenAI normalisation, tokenization, batching, prefetch) and times `--batches`
batches after two warm-up batches, so pipeline construction and shuffle-buffer filling are excluded but
epoch boundaries inside the timed window are not. Rows:

  synthetic@32    clip_synthetic/default (64x64 PNG) at the 32 px the main job (configs/synthetic_tiny.py)
                  trains on
  synthetic@64    the same at their stored 64 px
  synthetic@224   the same upsampled to 224 px
  jpeg@224        img2dataset-style TFRecord shards of 320x256 JPEGs (q90), cropped and resized to 224 px
  webdataset@224  the same JPEGs and captions as webdataset tar shards (source "webdataset")
  open_clip webdataset@224
                  open_clip's own loader (`open_clip_train.data.get_wds_dataset`, --dataset-resampled for an
                  endless stream) on those tar shards: PIL decode, RandomResizedCrop(224, scale (0.9, 1))
                  bicubic, OpenAI normalisation, open_clip's tokenizer, a torch DataLoader with one worker
                  process per core; skipped when open_clip_train or webdataset is not installed

tf.data uses all cores (AUTOTUNE). Compare `images_per_s` with the train step's images/s to see which
one limits training. "CPU ms/image" is the CPU time of the process (and of open_clip's worker processes)
over the timed batches per image: what an image costs, steadier than images/s on a shared machine. With
--repeats N every row is timed N times, the rows in turn, and the medians reported. The synthetic dataset
is built into --data_dir first if missing (timed separately). Other processes compete for the cores: the
table prints the 1-minute load average seen during the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = (
    # (name, source, image_size)
    ("synthetic@32", "synthetic", 32),
    ("synthetic@64", "synthetic", 64),
    ("synthetic@224", "synthetic", 224),
    ("jpeg@224", "tfrecord", 224),
    ("webdataset@224", "webdataset", 224),
    ("open_clip webdataset@224", "open_clip", 224),
)
# Throughput ratios the table states under it: (row, row it is compared with).
RATIOS = (("webdataset@224", "jpeg@224"), ("webdataset@224", "open_clip webdataset@224"))
JPEG_SIZE = (256, 320)  # height, width of the shard images, about what img2dataset keeps at 256 px


def _cpu_seconds() -> float | None:
    """CPU seconds used by this process and its live children (open_clip's DataLoader workers); None
    if the children cannot be read (psutil missing) while there are some."""
    total = time.process_time()
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            times = child.cpu_times()
            total += times.user + times.system
    except ImportError:
        return None if multiprocessing.active_children() else total
    return total


def _time_iterator(iterator, batches: int, batch_size: int) -> tuple[float, float, float | None]:
    """(images/s, ms/batch, CPU ms/image) over `batches` batches after two warm-up batches."""
    for _ in range(2):
        next(iterator)
    cpu, start = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed, cpu_end = time.perf_counter() - start, _cpu_seconds()
    cpu_ms = None if cpu is None or cpu_end is None else 1000 * (cpu_end - cpu) / (batches * batch_size)
    return batches * batch_size / elapsed, 1000 * elapsed / batches, cpu_ms


def _open_clip_iterator(pattern: str, batch_size: int, image_size: int, batches: int):
    """open_clip's training loader over webdataset shards, for `batches` + 2 batches."""
    import argparse

    import open_clip
    from open_clip_train.data import get_wds_dataset

    args = argparse.Namespace(
        train_data=pattern,
        train_num_samples=(batches + 2) * batch_size,
        dataset_resampled=True,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch_size,
        workers=len(os.sched_getaffinity(0)),
        world_size=1,
    )
    preprocess = open_clip.image_transform(image_size, is_train=True)
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    return iter(data.dataloader)


def _time_open_clip(
    pattern: str, batch_size: int, image_size: int, batches: int
) -> tuple[float, float, float | None]:
    """`_time_iterator` of open_clip's loader, in a fresh process: importing torch once tensorflow is
    loaded crashes the process (torch 2.14 after tensorflow-cpu 2.21)."""
    command = [sys.executable, os.path.abspath(__file__), "--open_clip_shards", pattern]
    command += ["--batches", str(batches), "--batch_size", str(batch_size), "--image_size", str(image_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    images_per_s, ms_per_batch, cpu_ms = json.loads(done.stdout.strip().splitlines()[-1])
    return images_per_s, ms_per_batch, cpu_ms


def run(
    batches: int = 30,
    batch_size: int = 128,
    data_dir: str | None = None,
    rows=ROWS,
    num_jpegs: int = 2048,
    repeats: int = 1,
) -> list[dict]:
    """Time each row `repeats` times, the rows in turn (each round starting one row later), and report
    medians; one dict per row (plus the synthetic build time when this call built it)."""
    from clip_jax.data import make_train_iterator, prepare_synthetic, testing

    start = time.perf_counter()
    prepare_synthetic(data_dir, "default")
    build_s = time.perf_counter() - start
    timings: dict[str, list[tuple[float, float, float | None, float]]] = {name: [] for name, _, _ in rows}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as records, tempfile.TemporaryDirectory() as tars:
        sources = {source for _, source, _ in rows}
        if "tfrecord" in sources:
            testing.write_caption_shards(records, num_jpegs, 8, image_size=JPEG_SIZE)
        if sources & {"webdataset", "open_clip"}:
            # The same JPEGs and captions as the TFRecord shards (same seed), 8 tars.
            testing.write_webdataset_shards(tars, num_jpegs, 8, image_size=JPEG_SIZE)
        tar_pattern = os.path.join(tars, "{00000..00007}.tar")
        for round_ in range(repeats):
            for name, source, image_size in rows[round_ % len(rows) :] + rows[: round_ % len(rows)]:
                if name in skipped:
                    continue
                if source == "open_clip":
                    try:
                        timed = _time_open_clip(tar_pattern, batch_size, image_size, batches)
                    except RuntimeError as e:
                        skipped[name] = str(e)
                        continue
                else:
                    if source == "synthetic":
                        config = {"source": "synthetic", "name": "default", "data_dir": data_dir}
                    elif source == "tfrecord":
                        config = {"source": "tfrecord", "path": records}
                    else:
                        config = {"source": "webdataset", "path": tar_pattern}
                    iterator = make_train_iterator(
                        config,
                        global_batch_size=batch_size,
                        image_size=image_size,
                        context_length=77,
                        seed=0,
                        process_index=0,
                        process_count=1,
                    )
                    timed = _time_iterator(iterator, batches, batch_size)
                    iterator.close()
                timings[name].append((*timed, os.getloadavg()[0]))
    results = []
    for name, _, image_size in rows:
        if name in skipped:
            results.append({"input": name, "skipped": skipped[name]})
            continue
        images_per_s, ms_per_batch, cpu_ms, load = (
            _median(column) for column in zip(*timings[name], strict=True)
        )
        results.append(
            {
                "input": name,
                "image_size": image_size,
                "batch": batch_size,
                "batches": batches,
                "repeats": repeats,
                "images_per_s": round(images_per_s, 1),
                "ms_per_batch": round(ms_per_batch, 1),
                "cpu_ms_per_image": None if cpu_ms is None else round(cpu_ms, 2),
                "cpu_cores": len(os.sched_getaffinity(0)),
                "load_avg": round(load, 1),
            }
        )
    if build_s > 1.0:  # built now, not found prepared
        results.append({"input": "clip_synthetic/default build", "build_s": round(build_s, 1)})
    return results


def _median(values) -> float | None:
    return None if any(v is None for v in values) else statistics.median(values)


def markdown(results: list[dict]) -> str:
    lines = [
        "| input | image size | batch | images/s | ms/batch | CPU ms/image | cores | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "images_per_s" in r:
            cpu = r.get("cpu_ms_per_image")
            lines.append(
                f"| {r['input']} | {r['image_size']} | {r['batch']} | {r['images_per_s']:.0f} | "
                f"{r['ms_per_batch']:.0f} | {'-' if cpu is None else f'{cpu:.2f}'} | {r['cpu_cores']} | "
                f"{r['load_avg']} |"
            )
    rows = {r["input"]: r for r in results if "images_per_s" in r}
    ratios = [(rows[a], rows[b]) for a, b in RATIOS if a in rows and b in rows]
    if ratios:
        lines.append("")
    for a, b in ratios:
        line = f"{a['input']} / {b['input']}: {a['images_per_s'] / b['images_per_s']:.2f}x the images/s"
        if a.get("cpu_ms_per_image") and b.get("cpu_ms_per_image"):
            line += f", {b['cpu_ms_per_image'] / a['cpu_ms_per_image']:.2f}x the images per CPU second"
        lines.append(line)
    skipped = [r for r in results if "skipped" in r]
    if skipped:
        lines.append("")
        lines += [f"{r['input']}: not run ({r['skipped']})" for r in skipped]
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
    parser.add_argument("--repeats", type=int, default=1, help="times each row, medians reported")
    parser.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="5 batches of 32, 256 JPEGs (a smoke run)")
    parser.add_argument(
        "--open_clip_shards",
        default=None,
        metavar="PATTERN",
        help="only time open_clip's loader on these shards and print [images/s, ms/batch] (how `run` "
        "times it, in a process without tensorflow)",
    )
    parser.add_argument("--image_size", type=int, default=224, help="with --open_clip_shards")
    args = parser.parse_args()
    if args.open_clip_shards:
        iterator = _open_clip_iterator(args.open_clip_shards, args.batch_size, args.image_size, args.batches)
        print(json.dumps(_time_iterator(iterator, args.batches, args.batch_size)))
        return
    if args.quick:
        results = run(batches=5, batch_size=32, data_dir=args.data_dir, num_jpegs=256)
    else:
        names = {n.strip() for n in args.rows.split(",") if n.strip()}
        unknown = names - {name for name, _, _ in ROWS}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; rows: {[name for name, _, _ in ROWS]}")
        rows = tuple(r for r in ROWS if not names or r[0] in names)
        results = run(args.batches, args.batch_size, args.data_dir, rows, repeats=args.repeats)
    print(markdown(results))


if __name__ == "__main__":
    main()
