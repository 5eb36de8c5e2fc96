"""Tokenizer throughput: clip_jax vs open_clip on the 80,000 ImageNet zero-shot prompts, and SigLIP's
sentencepiece tokenizer inside tf.data vs Python sentencepiece.

    python benchmarks/bench_tokenizer.py [--repeats 5]
    python benchmarks/bench_tokenizer.py --sentencepiece [--repeats 5]

CLIP's BPE: both tokenizers see the same prompts (1000 class names x 80 OpenAI templates) in one process,
alternating ours/theirs after a warm-up. Every timed run uses a freshly built tokenizer, so neither side
profits from word caches filled by an earlier run; building the tokenizer (reading the vocab) is outside
the timer for both. The outputs are checked to be identical before anything is reported. Wall-clock medians.

Sentencepiece (`--sentencepiece`): the same prompts, batched by 256 in a tf.data pipeline with parallel
maps as the training input tokenizes captions, once with the in-graph tokenizer (tensorflow-text's
SentencepieceTokenizer and tf.strings' canonicalisation: clip_jax/data/tokenize_ops.py) and once with the
Python tokenizer (clip_jax.siglip_tokenizer: Python canonicalisation, the `sentencepiece` package's encode)
in a tf.numpy_function, which is how any Python tokenizer runs in tf.data; plus the Python tokenizer called
directly on the whole list, for reference. The sentencepiece model is a unigram one trained here on the
prompts (8,000 pieces at most: no real SigLIP vocabulary can be downloaded here). Ids are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":
    # Run as a script from anywhere: make the repository's clip_jax importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

NAME = "tokenize 80k ImageNet prompts"


def imagenet_prompts() -> list[str]:
    """The 80,000 prompts of OpenAI's ImageNet zero-shot classifier."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return [template(name) for name in IMAGENET_CLASSNAMES for template in OPENAI_IMAGENET_TEMPLATES]


def _ours() -> Callable[[list[str]], np.ndarray]:
    from clip_jax.tokenizer import Tokenizer

    return Tokenizer()


def _theirs() -> Callable[[list[str]], np.ndarray]:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()  # what open_clip.tokenize and get_tokenizer('ViT-B-32') use
    return lambda texts: tokenizer(texts).numpy()


def _timed(
    make: Callable[[], Callable[[list[str]], np.ndarray]], prompts: list[str]
) -> tuple[float, np.ndarray]:
    tokenizer = make()  # fresh instance: cold caches
    start = time.perf_counter()
    tokens = tokenizer(prompts)
    return time.perf_counter() - start, tokens


def run(repeats: int = 5) -> dict:
    """Median throughput (prompts/s) of both tokenizers over `repeats` alternating cold runs."""
    prompts = imagenet_prompts()
    # Warm-up: imports, lazy initialisation, CPU caches; a tenth of the prompts is enough for that.
    _timed(_ours, prompts[:8000])
    _timed(_theirs, prompts[:8000])
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        seconds, ours_tokens = _timed(_ours, prompts)
        ours_s.append(seconds)
        seconds, theirs_tokens = _timed(_theirs, prompts)
        theirs_s.append(seconds)
        if not np.array_equal(ours_tokens, theirs_tokens):
            raise AssertionError("clip_jax and open_clip tokens differ on the ImageNet prompts")
    ours_per_s = len(prompts) / statistics.median(ours_s)
    theirs_per_s = len(prompts) / statistics.median(theirs_s)
    return {
        "name": NAME,
        "ours_per_s": ours_per_s,
        "theirs_per_s": theirs_per_s,
        "ratio": ours_per_s / theirs_per_s,
    }


def to_markdown(result: dict) -> str:
    """RESULTS.md's table of either benchmark of this file (run_all's tokenizer and tokenizer_sentencepiece)."""
    if "direct_per_s" in result:
        return sentencepiece_markdown(result)
    header = "| benchmark | clip_jax (prompts/s) | open_clip (prompts/s) | ratio (ours/theirs) |\n|---|---|---|---|"
    row = (
        f"| {result['name']} | {result['ours_per_s']:,.0f} | {result['theirs_per_s']:,.0f} "
        f"| {result['ratio']:.1f}x |"
    )
    return f"{header}\n{row}"


SP_NAME = "SigLIP sentencepiece, 80k ImageNet prompts in tf.data"
SP_BATCH = 256


def _train_spiece(prompts: list[str], path: Path) -> None:
    """A unigram model of at most 8,000 pieces with SigLIP's special ids, trained on the prompts."""
    from clip_jax.siglip_tokenizer import canonicalize_text, train_sentencepiece

    path.write_bytes(train_sentencepiece(sorted({canonicalize_text(p) for p in prompts}), 8000))


def _tokenize_in_pipeline(prompts: list[str], tokenize) -> tuple[float, np.ndarray]:
    """Seconds to tokenize `prompts` in batches of SP_BATCH through tf.data's parallel maps, and the ids."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(prompts).batch(SP_BATCH)
    ds = ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(4)
    start = time.perf_counter()
    ids = np.concatenate(list(ds.as_numpy_iterator()))
    return time.perf_counter() - start, ids


def run_sentencepiece(repeats: int = 5) -> dict:
    """Median throughput (prompts/s) of the in-graph and the Python sentencepiece tokenizer in the same
    tf.data pipeline, alternating, after a warm-up; and of the Python tokenizer called directly."""
    import os
    import tempfile

    load_before = os.getloadavg()[0]
    # open_clip (torch, triton) before tensorflow: the other order crashes here (triton after tensorflow).
    prompts = imagenet_prompts()

    import tensorflow as tf

    from clip_jax.data.tokenize_ops import in_graph_tokenizer
    from clip_jax.machine import cpu_name
    from clip_jax.siglip_tokenizer import SiglipTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spiece.model"
        _train_spiece(prompts, path)
        tokenizer = SiglipTokenizer(path, 64)

    def python_in_graph(captions):
        ids = tf.numpy_function(
            lambda c: tokenizer([s.decode("utf-8") for s in c]), [captions], tf.int32, stateful=False
        )
        ids.set_shape([None, 64])
        return ids

    graph = in_graph_tokenizer(tokenizer, 64)
    _tokenize_in_pipeline(prompts[:8000], graph)  # warm-up: tracing, thread pools, caches
    _tokenize_in_pipeline(prompts[:8000], python_in_graph)
    ours_s, theirs_s, direct_s = [], [], []
    for _ in range(repeats):
        seconds, ours = _tokenize_in_pipeline(prompts, graph)
        ours_s.append(seconds)
        seconds, theirs = _tokenize_in_pipeline(prompts, python_in_graph)
        theirs_s.append(seconds)
        start = time.perf_counter()
        direct = tokenizer(prompts)
        direct_s.append(time.perf_counter() - start)
        if not (np.array_equal(ours, theirs) and np.array_equal(ours, direct)):
            raise AssertionError("in-graph and Python sentencepiece ids differ on the ImageNet prompts")
    per_s = {k: len(prompts) / statistics.median(v) for k, v in (("ours", ours_s), ("theirs", theirs_s))}
    return {
        "name": SP_NAME,
        "ours_per_s": per_s["ours"],
        "theirs_per_s": per_s["theirs"],
        "direct_per_s": len(prompts) / statistics.median(direct_s),
        "ratio": per_s["ours"] / per_s["theirs"],
        "vocab_size": tokenizer.vocab_size,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "load_average": (load_before, os.getloadavg()[0]),  # above the core count: the CPU was shared
    }


def sentencepiece_markdown(result: dict) -> str:
    header = (
        "| benchmark | in-graph (prompts/s) | Python sentencepiece in tf.numpy_function (prompts/s) "
        "| ratio | Python, called directly (prompts/s) |\n|---|---|---|---|---|"
    )
    row = (
        f"| {result['name']} | {result['ours_per_s']:,.0f} | {result['theirs_per_s']:,.0f} "
        f"| {result['ratio']:.2f}x | {result['direct_per_s']:,.0f} |"
    )
    before, after = result["load_average"]
    return (
        f"{header}\n{row}\n\n{result['cpu']}; load average {before:.1f} before, {after:.1f} after; "
        f"{result['vocab_size']} pieces."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sentencepiece", action="store_true", help="SigLIP's tokenizer in tf.data instead")
    args = parser.parse_args()
    if args.sentencepiece:
        print(sentencepiece_markdown(run_sentencepiece(args.repeats)))
    else:
        print(to_markdown(run(args.repeats)))
