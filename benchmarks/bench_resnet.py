"""RN50 image tower inference: clip_jax's ModifiedResNet vs open_clip's, fp32, images/s.

    python benchmarks/bench_resnet.py [--batch 8] [--repeats 7] [--model RN50] [--quick]

Both towers hold the same random weights (open_clip's init with every BatchNorm statistic randomised,
converted by clip_jax's loader) and see the same images; their features are checked to agree to 1e-4
relative before anything is timed. One process, fp32, eval mode (running statistics), each framework with
the same number of threads (XLA:CPU's one intra-op thread per core; torch.set_num_threads(core count),
`--threads` to change torch's). Timing is `common.alternate`: a warm-up each, then rounds of ours and theirs
back to back in alternating order; medians, and the throughput ratio ours/theirs (> 1: clip_jax faster).
The record names the CPU (`lscpu`'s Model name). Compile time (jit, once) is reported beside, not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

NAME = "RN50 image tower (fp32)"


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


def run(model: str = "RN50", batch: int = 8, repeats: int = 7, threads: int | None = None) -> dict:
    """Median images/s of both image towers on `batch` images, and the ratio ours/theirs."""
    import torch
    import torchvision  # noqa: F401  (before tensorflow, which other imports may pull in)

    # XLA:CPU runs one intra-op thread per core (it has no flag for fewer); torch gets as many.
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import open_clip
    from common import alternate, throughput_row
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
    start = time.perf_counter()
    ours_out = np.asarray(encode(params, x))
    compile_s = time.perf_counter() - start

    def theirs():
        with torch.no_grad():
            return ref.visual(images_t)

    want = theirs().numpy()
    err = float(np.max(np.abs(ours_out - want)) / np.max(np.abs(want)))
    if not err <= 1e-4:
        raise AssertionError(f"features differ from open_clip's: max relative error {err:.3g}")
    timings = alternate(lambda: encode(params, x).block_until_ready(), theirs, repeats)
    return throughput_row(
        f"{model} image tower (fp32, batch {batch})",
        "images/s",
        batch,
        timings,
        cpu=cpu_model(),
        threads=threads,
        torch_threads=torch.get_num_threads(),
        compile_s=compile_s,
        max_rel_err=err,
        target="resnet",
    )


def to_markdown(row: dict) -> str:
    """RESULTS.md's section: the ratio table, the CPU and the agreement of the two towers' outputs."""
    from common import ratio_table

    return (
        ratio_table([row])
        + f"\n\nCPU: {row['cpu']}; {row['threads']} threads each side; ours compile {row['compile_s']:.1f} s "
        f"(not in the step time); max relative difference of the features {row['max_rel_err']:.1e}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="RN50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="batch 2, 3 repeats")
    args = parser.parse_args()
    batch, repeats = (2, 3) if args.quick else (args.batch, args.repeats)
    row = run(args.model, batch, repeats, args.threads)
    from common import ratio_table

    print(ratio_table([row]))
    print(f"CPU: {row['cpu']}; threads: {row['threads']}; compile {row['compile_s']:.1f} s; "
          f"max rel err {row['max_rel_err']:.2g}")  # fmt: skip
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}))


if __name__ == "__main__":
    main()
