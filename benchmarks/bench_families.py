"""Model families beside their reference implementations, fp32 inference: clip_jax's RN50 image tower
(ModifiedResNet) vs open_clip's, and ViT-B-16-SigLIP's image and text towers vs transformers'.

    python benchmarks/bench_families.py [--family resnet] [--batch 8] [--repeats 7] [--model RN50] [--quick]
    python benchmarks/bench_families.py --family siglip [--batch 4] [--text-batch 16] [--repeats 5]

Both sides of a comparison hold the same random weights and see the same inputs; their features are
checked to agree to 1e-4 relative before anything is timed. RN50: open_clip's init with every BatchNorm
statistic randomised, converted by clip_jax's loader. SigLIP: a random transformers SiglipModel of the
named config's shapes with every LayerNorm and bias perturbed (at their inits, 1 and 0, a mapping that
dropped them would pass), written with save_pretrained and read by clip_jax's `load_pretrained`; its
towers are SiglipModel's `vision_model` and `text_model` (the modules `get_image_features` and
`get_text_features` call), with transformers' default attention. One process, fp32, eval mode, each
framework with the same number of threads (XLA:CPU's one intra-op thread per core; torch.set_num_threads(core
count), `--threads` to change torch's). Timing is `common.alternate`: a warm-up each, then rounds of ours and
theirs back to back in alternating order; medians, and the throughput ratio ours/theirs (> 1: clip_jax
faster). The record names the CPU (`lscpu`'s Model name). Compile time (jit, once) is reported beside, not
timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# Features are O(1) and both sides compute in fp32: agreement is to fp32 rounding, far inside this.
MAX_REL_ERR = 1e-4


def cpu_model() -> str:
    """`lscpu | grep 'Model name'`, the CPU the figures are for."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def set_torch_threads(threads: int | None) -> int:
    """XLA:CPU runs one intra-op thread per core (it has no flag for fewer); torch gets as many."""
    import torch
    import torchvision  # noqa: F401  (before tensorflow, which other imports may pull in)

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def compare(
    name: str,
    unit: str,
    items: int,
    ours: Callable[[], Any],
    theirs: Callable[[], Any],
    repeats: int,
    reference: str,
    **extra: Any,
) -> dict:
    """Time `ours` (a jitted call; its first call, the compile, is timed apart) against `theirs` (torch,
    under no_grad) once their outputs agree to MAX_REL_ERR; one `throughput_row` in `unit`."""
    import numpy as np
    import torch
    from common import alternate, throughput_row

    start = time.perf_counter()
    ours_out = np.asarray(ours())
    compile_s = time.perf_counter() - start

    def theirs_no_grad():
        with torch.no_grad():
            return theirs()

    want = theirs_no_grad().numpy()
    err = float(np.max(np.abs(ours_out - want)) / np.max(np.abs(want)))
    if not err <= MAX_REL_ERR:
        raise AssertionError(f"{name}: features differ from {reference}'s: max relative error {err:.3g}")
    timings = alternate(lambda: ours().block_until_ready(), theirs_no_grad, repeats)
    return throughput_row(
        name,
        unit,
        items,
        timings,
        cpu=cpu_model(),
        torch_threads=torch.get_num_threads(),
        compile_s=compile_s,
        max_rel_err=err,
        reference=reference,
        **extra,
    )


def run_resnet(model: str = "RN50", batch: int = 8, repeats: int = 7, threads: int | None = None) -> dict:
    """Median images/s of both image towers on `batch` images, and the ratio ours/theirs."""
    threads = set_torch_threads(threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clip_jax import CLIP, load_pretrained

    torch.manual_seed(0)
    ref = open_clip.create_model(model, pretrained=None).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, b in ref.visual.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            # open_clip zero-inits each block's bn3 weight; random, so that every block computes something.
        for name, p in ref.visual.named_parameters():
            if name.endswith("bn3.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        clip_model, params = load_pretrained(model, path)
    size = clip_model.cfg.vision.image_size
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    encode = jax.jit(lambda p, x: clip_model.apply({"params": p}, x, method=CLIP.encode_image))
    x = jnp.asarray(images)
    return compare(
        f"{model} image tower (fp32, batch {batch})",
        "images/s",
        batch,
        lambda: encode(params, x),
        lambda: ref.visual(images_t),
        repeats,
        "open_clip",
        threads=threads,
        target="resnet",
    )


# Kept for callers of the RN50-only script.
run = run_resnet


def random_siglip(name: str, seed: int = 0):
    """A transformers SiglipModel with the shapes of clip_jax's named SigLIP config, eval mode: its own
    init, then every LayerNorm scale 1 + N(0, 0.1^2) and every bias (and the probe) moved by N(0, 0.02^2)."""
    import torch
    import transformers

    from clip_jax import get_model_config
    from clip_jax.weights.hf import siglip_config_to_hf

    hf_config = transformers.SiglipConfig(**siglip_config_to_hf(get_model_config(name)))
    torch.manual_seed(seed)
    ref = transformers.SiglipModel(hf_config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif pname.endswith("bias") or pname.endswith("probe"):
                p.add_(0.02 * noise)
    return ref


def run_siglip(
    model: str = "ViT-B-16-SigLIP",
    image_batch: int = 4,
    text_batch: int = 16,
    repeats: int = 5,
    threads: int | None = None,
) -> list[dict]:
    """Image tower (images/s) and text tower (texts/s, full-length captions) of a SigLIP, clip_jax vs
    transformers, on the same random weights; two rows."""
    threads = set_torch_threads(threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from clip_jax import CLIP, get_model_config, load_pretrained

    ref = random_siglip(model)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        clip_model, params = load_pretrained(None, tmp)
    if clip_model.cfg != get_model_config(model):
        raise AssertionError(f"the saved SiglipModel loads as {clip_model.cfg}, not {model}")
    cfg = clip_model.cfg
    rng = np.random.default_rng(0)
    size = cfg.vision.image_size
    images = rng.standard_normal((image_batch, size, size, 3)).astype(np.float32)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    # SigLIP pads every caption to the full context and reads every position: random ids are its load.
    tokens = rng.integers(0, cfg.text.vocab_size, (text_batch, cfg.text.context_length), dtype=np.int32)
    input_ids = torch.from_numpy(tokens).long()
    encode_image = jax.jit(lambda p, x: clip_model.apply({"params": p}, x, method=CLIP.encode_image))
    encode_text = jax.jit(lambda p, t: clip_model.apply({"params": p}, t, method=CLIP.encode_text))
    x, t = jnp.asarray(images), jnp.asarray(tokens)
    extra = dict(threads=threads, attention=ref.config._attn_implementation, target="siglip")
    return [
        compare(
            f"{model} image tower (fp32, batch {image_batch}) vs transformers",
            "images/s",
            image_batch,
            lambda: encode_image(params, x),
            lambda: ref.vision_model(pixel_values=pixels).pooler_output,
            repeats,
            "transformers",
            **extra,
        ),
        compare(
            f"{model} text tower (fp32, batch {text_batch} x {cfg.text.context_length} tokens) vs transformers",
            "texts/s",
            text_batch,
            lambda: encode_text(params, t),
            lambda: ref.text_model(input_ids=input_ids).pooler_output,
            repeats,
            "transformers",
            **extra,
        ),
    ]


def to_markdown(result: dict | list[dict]) -> str:
    """RESULTS.md's section: the ratio table, the CPU and the agreement of the two sides' outputs."""
    from common import ratio_table

    rows = result if isinstance(result, list) else [result]
    first = rows[0]
    compiles = ", ".join(f"{r['compile_s']:.1f} s" for r in rows)
    errors = ", ".join(f"{r['max_rel_err']:.1e}" for r in rows)
    attention = f"; transformers' attention: {first['attention']}" if "attention" in first else ""
    return (
        ratio_table(rows)
        + f"\n\nCPU: {first['cpu']}; {first['threads']} threads each side; ours compile {compiles} "
        f"(not in the step time); max relative difference of the features {errors}{attention}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=("resnet", "siglip"), default="resnet")
    parser.add_argument("--model", default=None, help="RN50 / ViT-B-16-SigLIP by default")
    parser.add_argument("--batch", type=int, default=None, help="images: 8 (resnet), 4 (siglip)")
    parser.add_argument("--text-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None, help="7 (resnet), 5 (siglip)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="batch 2 (and 4 texts), 3 repeats")
    args = parser.parse_args()
    if args.family == "resnet":
        batch, repeats = (2, 3) if args.quick else (args.batch or 8, args.repeats or 7)
        rows = [run_resnet(args.model or "RN50", batch, repeats, args.threads)]
    else:
        batches = (2, 4) if args.quick else (args.batch or 4, args.text_batch)
        repeats = 3 if args.quick else args.repeats or 5
        rows = run_siglip(args.model or "ViT-B-16-SigLIP", *batches, repeats, args.threads)
    print(to_markdown(rows))
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}))


if __name__ == "__main__":
    main()
