"""The XLA:CPU investigation: every setting tried to make XLA:CPU faster, each against open_clip.

    python benchmarks/cpu_sweep.py [--quick]     # or: benchmarks/run_all.py --only cpu_variants

Settings: XLA flag sets and one core (each in a child process running bench_models.py, since XLA reads
its flags once and taskset pins a whole process), model variants of our side (`model_variants.VARIANTS`,
in this process), batch sizes, and one fp32 GEMM of the MLP's shape, the kernel that bounds everything
else. benchmarks/README.md has the findings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_models import TRAIN_MODEL, bench_gemm, bench_inference  # noqa: E402
from benchmarks.common import log_row, read_result  # noqa: E402
from benchmarks.model_pair import make_pair  # noqa: E402
from benchmarks.model_variants import VARIANTS  # noqa: E402

BENCH_MODELS = Path(__file__).resolve().with_name("bench_models.py")

# XLA:CPU flag sets tried (each in its own process: XLA reads flags once). In jax 0.10 XLA:CPU sends most
# dots to YNNPACK fusions ("ynn_fusion" in the optimized HLO); with the YNN fusion types emptied they go
# to XLA's own dot emitter (Eigen).
XLA_FLAG_SETS: dict[str, str] = {
    "default": "",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_dot_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "thunk_runtime_off": "--xla_cpu_use_thunk_runtime=false",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}


def _subprocess_rows(args: list[str], flags: str = "", one_core: bool = False) -> list[dict]:
    """Run bench_models.py in a child process (own XLA_FLAGS, optionally pinned to one core); its rows."""
    cmd = [sys.executable, str(BENCH_MODELS), "--json", *args]
    if flags:
        cmd.append(f"--xla-flags={flags}")
    if one_core:
        cmd = ["taskset", "-c", "0", *cmd]
    # stderr streams through: the child's progress lines show as it runs.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    rows = read_result(proc.stdout)
    if proc.returncode or rows is None:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return rows


SWEEP_VARIANTS = (
    "default",
    "before_rows",
    "proj_3d",
    "conv_patch",
    "packed_qkv",
    "attn_einsum",
    "scan",
    "bf16",
)
SWEEP_TRAIN_VARIANTS = ("default", "before_rows", "packed_qkv", "scan")


def sweep(
    quick: bool = False, model: str = TRAIN_MODEL, batch: int | None = None, train: bool = True
) -> list[dict]:
    """Every setting tried to make XLA:CPU faster, each measured against open_clip in the same process.

    One row per (setting, benchmark); `setting` says what differs from the default run. open_clip is the
    same in every row except `one core`, where both sides are pinned to one core (taskset).
    """
    batch = batch or (4 if quick else 16)
    repeats = 2 if quick else 5
    common = ["--models", model, "--batch", str(batch), "--repeats", str(repeats)]
    rows: list[dict] = []

    def add(setting: str, new_rows: list[dict]) -> None:
        for r in new_rows:
            rows.append({**r, "setting": setting})
            log_row(rows[-1])

    # The kernel under everything: one fp32 GEMM of the MLP's shape.
    add("default", [bench_gemm(repeats=max(repeats, 5))])
    # Model variants of our side, in this process.
    pair = make_pair(model)
    for name in SWEEP_VARIANTS:
        for tower in ("image", "text"):
            if tower == "text" and name == "conv_patch":
                continue  # the patch embedding is in the image tower only
            add(f"variant {name}", [bench_inference(pair, tower, batch, repeats, VARIANTS[name])])
    # Batch sizes (default variant).
    for b in (1, 4 * batch) if not quick else (1,):
        for tower in ("image", "text"):
            add(f"batch {b}", [bench_inference(pair, tower, b, repeats)])
    del pair
    # ViT-B-16's 197 tokens: attention and the patch embedding weigh more than at 50.
    if not quick:
        pair16 = make_pair("ViT-B-16")
        for name in ("default", "before_rows"):
            add(f"variant {name}", [bench_inference(pair16, "image", batch // 2, repeats, VARIANTS[name])])
        del pair16
    # XLA flags and thread count, each in a fresh process.
    for name, flags in XLA_FLAG_SETS.items():
        if name != "default":
            add(f"XLA_FLAGS {name}", _subprocess_rows(["--only", "gemm,image,text", *common], flags))
    add("one core (taskset -c 0)", _subprocess_rows(["--only", "gemm,image,text", *common], one_core=True))
    if train:
        train_batch = 8 if quick else 32
        for v in SWEEP_TRAIN_VARIANTS:
            args = ["--only", "train", "--models", model, "--train-batch", str(train_batch), "--variants", v]
            add(f"variant {v}", _subprocess_rows([*args, "--repeats", str(max(1, repeats - 2))]))
    return rows


def to_markdown(rows: list[dict]) -> str:
    """The sweep's table: one row per (setting, benchmark), what differs from the default run first."""
    lines = [
        "| setting | benchmark | ratio ours/theirs | median s ours / theirs | ratio by CPU time | ours compile s "
        "| torch threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['name']} | {r['ratio']:.2f}x | {r['ours_s']:.3f} / {r['theirs_s']:.3f} "
            f"| {r['cpu_ratio']:.2f}x | {r['compile_s']:.1f} | {r['torch_threads']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """The command line (module docstring): the sweep's table on stdout."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, fewer repeats (smoke test)")
    print(to_markdown(sweep(quick=parser.parse_args().quick)))


if __name__ == "__main__":
    main()
