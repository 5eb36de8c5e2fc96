"""Tokenizer throughput: clip_jax vs open_clip on the 80,000 ImageNet zero-shot prompts.

    python benchmarks/bench_tokenizer.py [--repeats 5]

Both tokenizers see the same prompts (1000 class names x 80 OpenAI templates) in one process, alternating
ours/theirs after a warm-up. Every timed run uses a freshly built tokenizer, so neither side profits from
word caches filled by an earlier run; building the tokenizer (reading the vocab) is outside the timer for
both. The outputs are checked to be identical before anything is reported. Wall-clock medians.
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
    header = "| benchmark | clip_jax (prompts/s) | open_clip (prompts/s) | ratio (ours/theirs) |\n|---|---|---|---|"
    row = (
        f"| {result['name']} | {result['ours_per_s']:,.0f} | {result['theirs_per_s']:,.0f} "
        f"| {result['ratio']:.1f}x |"
    )
    return f"{header}\n{row}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    print(to_markdown(run(parser.parse_args().repeats)))
