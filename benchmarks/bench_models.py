"""Image/text tower inference and the full train step: clip_jax vs open_clip on one random model.

    python benchmarks/bench_models.py                       # all benchmarks, default sizes
    python benchmarks/bench_models.py --quick               # small batches, 2 repeats (smoke test)
    python benchmarks/bench_models.py --only image --models ViT-B-16 --batch 8 --variants default,before_rows
    python benchmarks/bench_models.py --xla-flags=--xla_cpu_use_thunk_runtime=false

Both sides compute the same function: one random open_clip model (`open_clip.create_model(name,
pretrained=None)`) is converted with the project's converter (`model_pair.py`), and before anything is
timed the outputs are asserted to agree (features to 1e-4; for the train step, the loss of the first
step on the same batch). Same config, batch, fp32, one process, default thread
counts of both frameworks (torch: `torch.get_num_threads()`, XLA:CPU: one intra-op thread per core).

  image   `encode_image` on [B, 224, 224, 3] (ours, jitted) vs [B, 3, 224, 224] (open_clip, inference_mode)
  text    `encode_text` on [B, 77] token ids ending in EOT
  zeroshot  a zero-shot classifier from ImageNet class names x 80 templates, tokenizer included, through
          each library's own function (ours trims the padding after the last end-of-text token)
  train   forward both towers, contrastive loss, backward, AdamW, logit-scale clamp. Ours:
          `clip_jax.train.step.make_train_step` + `clip_jax.train.optim.make_optimizer`, jitted, state donated;
          compile time (lower + compile) reported apart. Theirs: open_clip's model + `open_clip.loss.ClipLoss`
          + `torch.optim.AdamW` with open_clip_train's parameter groups (no decay on gains and biases).

Variants (`--variants`) change only our side, to measure what a model change would buy before it is made
in clip_jax/models: they are applied by patching the model classes inside this process
(`model_variants.VARIANTS`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import add_xla_flags

    # XLA reads its flags when the backend starts, so --xla-flags must be applied before jax is imported.
    _early = argparse.ArgumentParser(add_help=False)
    _early.add_argument("--xla-flags", default=None)
    add_xla_flags(os.environ, _early.parse_known_args()[0].xla_flags or "")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import ATOL, alternate, emit_result, log_row, ratio_table, throughput_row  # noqa: E402
from benchmarks.model_pair import Pair, make_pair, model_config, random_batch, to_torch  # noqa: E402
from benchmarks.model_variants import VARIANTS, Variant  # noqa: E402
from clip_jax.models import CLIP  # noqa: E402
from clip_jax.train.optim import make_optimizer  # noqa: E402
from clip_jax.train.step import init_train_state, make_train_step  # noqa: E402

MODELS = ("ViT-B-32", "ViT-B-16")
BENCHMARKS = ("image", "text", "zeroshot", "train")
TRAIN_MODEL = "ViT-B-32"
TARGETS = {"image": 1.2, "text": 1.2, "train": 1.2}
LR, WEIGHT_DECAY, BETAS, EPS = 5e-4, 0.2, (0.9, 0.98), 1e-6


def _machine_note() -> dict:
    import torch

    return {"torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def bench_inference(
    pair: Pair, tower: str, batch: int, repeats: int, variant: Variant = VARIANTS["default"]
) -> dict:
    """Median throughput of `encode_image` or `encode_text`, ours (jitted) vs open_clip (inference_mode)."""
    import torch

    data = random_batch(pair.cfg, batch)
    key = "image" if tower == "image" else "text"
    x = jax.device_put(data[key])
    xt = to_torch(data)[key]
    model = variant.model(pair.cfg)
    params = jax.device_put(variant.params(pair.params))
    method = CLIP.encode_image if tower == "image" else CLIP.encode_text
    torch_fn = pair.torch_model.encode_image if tower == "image" else pair.torch_model.encode_text

    with variant.active():
        start = time.perf_counter()
        compiled = (
            jax.jit(lambda p, x: model.apply({"params": p}, x, method=method)).lower(params, x).compile()
        )
        compile_s = time.perf_counter() - start

    def ours():
        return compiled(params, x).block_until_ready()

    def theirs():
        with torch.inference_mode():
            return torch_fn(xt)

    reference = theirs().numpy()
    max_diff = float(np.max(np.abs(np.asarray(ours(), np.float32) - reference)))
    bound = variant.tolerance(pair.cfg, tower, float(np.max(np.abs(reference))))
    if not max_diff <= bound:
        raise AssertionError(
            f"{pair.name} {tower} ({variant.name}): max |ours - open_clip| = {max_diff:.2e} > {bound:.2e}"
        )
    timings = alternate(ours, theirs, repeats)
    return throughput_row(
        f"{pair.name} {tower} tower, batch {batch}"
        + ("" if variant.name == "default" else f" [{variant.name}]"),
        "images/s" if tower == "image" else "texts/s",
        batch,
        timings,
        benchmark=tower,
        target=tower,
        model=pair.name,
        batch=batch,
        variant=variant.name,
        compile_s=compile_s,
        max_abs_diff=max_diff,
        **_machine_note(),
    )


def bench_gemm(m: int = 1576, k: int = 768, n: int = 3072, repeats: int = 5) -> dict:
    """One fp32 matmul [m, k] x [k, n] (default: ViT-B-16's MLP at batch 8): XLA:CPU's kernel vs torch's."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    ja, jb, ta, tb = jax.device_put(a), jax.device_put(b), torch.from_numpy(a), torch.from_numpy(b)
    start = time.perf_counter()
    compiled = jax.jit(jnp.matmul).lower(ja, jb).compile()
    compile_s = time.perf_counter() - start
    ours = lambda: compiled(ja, jb).block_until_ready()  # noqa: E731
    theirs = lambda: torch.mm(ta, tb)  # noqa: E731
    max_diff = float(np.max(np.abs(np.asarray(ours()) - theirs().numpy())))
    if not max_diff <= ATOL:
        raise AssertionError(f"matmul: max |ours - torch| = {max_diff:.2e}")
    gflop = 2 * m * k * n / 1e9
    return throughput_row(
        f"matmul {m}x{k} @ {k}x{n}",
        "GFLOP/s",
        gflop,
        alternate(ours, theirs, repeats),
        benchmark="gemm",
        variant="default",
        compile_s=compile_s,
        max_abs_diff=max_diff,
        **_machine_note(),
    )


def bench_zeroshot(pair: Pair, classes: int, repeats: int) -> dict:
    """Building a zero-shot classifier, as each library's users do: `classes` ImageNet class names x
    OpenAI's 80 templates, tokenized and encoded in one batch. Ours (`build_zeroshot_classifier`) drops
    the padding after the last end-of-text token (`trim_tokens`; exact, the text tower is causal);
    open_clip's `build_zero_shot_classifier` encodes all 77 positions."""
    import torch
    from open_clip import get_tokenizer
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from clip_jax.eval import metadata
    from clip_jax.eval.features import trim_tokens
    from clip_jax.eval.zeroshot import build_zeroshot_classifier
    from clip_jax.tokenizer import tokenize

    names = metadata.imagenet_classnames()
    classnames = names[:: len(names) // classes][:classes]
    templates = metadata.imagenet_templates()
    prompts = classes * len(templates)
    model, params = CLIP(pair.cfg), jax.device_put(pair.params)
    tokenizer = get_tokenizer(pair.name)

    def ours() -> np.ndarray:
        return build_zeroshot_classifier(model, params, classnames, templates, batch_size=prompts)

    def theirs() -> np.ndarray:
        with torch.inference_mode():
            return build_zero_shot_classifier(
                pair.torch_model, tokenizer, classnames, templates, num_classes_per_batch=classes
            ).numpy()

    start = time.perf_counter()
    first = ours()  # compiles for this token width
    compile_s = time.perf_counter() - start
    max_diff = float(np.max(np.abs(first - theirs())))
    if not max_diff <= ATOL:
        raise AssertionError(f"{pair.name} zero-shot classifier: max |ours - open_clip| = {max_diff:.2e}")
    width = trim_tokens(tokenize([t.format(c) for c in classnames for t in templates])).shape[1]
    return throughput_row(
        f"{pair.name} zero-shot classifier, {classes} classes x {len(templates)} prompts",
        "prompts/s",
        prompts,
        alternate(ours, theirs, repeats, warmup=0),
        benchmark="zeroshot",
        target="text",
        model=pair.name,
        batch=prompts,
        variant="default",
        tokens_encoded=width,
        compile_s=compile_s,  # the first call: compilation plus one run
        max_abs_diff=max_diff,
        **_machine_note(),
    )


def _torch_train_step(pair: Pair, data: dict[str, Any]) -> Callable[[], float]:
    """open_clip's training step as its train loop runs it (fp32, no AMP, one device)."""
    import open_clip
    import torch

    model = copy.deepcopy(pair.torch_model).train()
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WEIGHT_DECAY},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    loss_fn = open_clip.loss.ClipLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        img, txt, scale = model(data["image"], data["text"])
        loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    return step


def bench_train_step(pair: Pair, batch: int, repeats: int, variant: Variant = VARIANTS["default"]) -> dict:
    """Median step time of the full train step, ours (jitted, donated state) vs open_clip + AdamW."""
    data = random_batch(pair.cfg, batch, seed=1)
    batch_j = jax.device_put(data)
    model = variant.model(pair.cfg)
    params = jax.device_put(variant.params(pair.params))
    tx, _ = make_optimizer(
        params,
        lr=LR,
        total_steps=10_000,
        warmup_steps=0,
        weight_decay=WEIGHT_DECAY,
        b1=BETAS[0],
        b2=BETAS[1],
        eps=EPS,
    )
    state = init_train_state(params, tx, jax.random.key(0))
    with variant.active():
        start = time.perf_counter()
        lowered = jax.jit(make_train_step(model, tx), donate_argnums=0).lower(state, batch_j)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start

    holder = {"state": state}

    def ours() -> float:
        holder["state"], metrics = compiled(holder["state"], batch_j)
        jax.block_until_ready(holder["state"])
        return float(metrics["loss"])

    theirs = _torch_train_step(pair, to_torch(data))
    # The first step of each starts from the same weights on the same batch: same loss. It also warms up.
    ours_loss, theirs_loss = ours(), theirs()
    if not abs(ours_loss - theirs_loss) <= variant.tolerance(pair.cfg, "train", abs(theirs_loss)):
        raise AssertionError(
            f"{pair.name} train step ({variant.name}): loss {ours_loss} vs open_clip {theirs_loss}"
        )
    timings = alternate(ours, theirs, repeats, warmup=0)
    return throughput_row(
        f"{pair.name} train step, batch {batch}"
        + ("" if variant.name == "default" else f" [{variant.name}]"),
        "pairs/s",
        batch,
        timings,
        benchmark="train",
        target="train",
        model=pair.name,
        batch=batch,
        variant=variant.name,
        compile_s=compile_s,
        first_loss_ours=ours_loss,
        first_loss_theirs=theirs_loss,
        **_machine_note(),
    )


def run(
    quick: bool = False,
    models: tuple[str, ...] = MODELS,
    only: tuple[str, ...] = BENCHMARKS,
    batch: int | None = None,
    train_batch: int | None = None,
    repeats: int | None = None,
    variants: tuple[str, ...] = ("default",),
) -> list[dict]:
    """Every requested (benchmark, model, variant); one result dict per row. Train step on ViT-B-32 only
    unless `models` excludes it (then on the first model given)."""
    batch = batch or (4 if quick else 16)
    train_batch = train_batch or (8 if quick else 32)
    repeats = repeats or (2 if quick else 5)
    rows = []
    if "gemm" in only:
        rows.append(bench_gemm(repeats=max(repeats, 5)))
        log_row(rows[-1])
    zeroshot_done: set = set()
    for name in models:
        if not set(only) & {"image", "text", "zeroshot", "train"}:
            break
        pair = make_pair(name)
        for v in variants:
            variant = VARIANTS[v]
            for tower in ("image", "text"):
                if tower in only:
                    rows.append(bench_inference(pair, tower, batch, repeats, variant))
                    log_row(rows[-1])
            # The classifier is the text tower's work only: one row per distinct text tower (ViT-B-32 and
            # ViT-B-16 share theirs).
            text_tower = (pair.cfg.text, pair.cfg.embed_dim, pair.cfg.quick_gelu)
            if "zeroshot" in only and v == "default" and text_tower not in zeroshot_done:
                zeroshot_done.add(text_tower)
                rows.append(bench_zeroshot(pair, 2 if quick else 4, repeats))
                log_row(rows[-1])
            if "train" in only and name == (TRAIN_MODEL if TRAIN_MODEL in models else models[0]):
                rows.append(
                    bench_train_step(
                        pair, train_batch, max(1, repeats - 2) if not quick else repeats, variant
                    )
                )
                log_row(rows[-1])
        del pair
    return rows


def to_markdown(rows: list[dict]) -> str:
    """RESULTS.md's section: the ratio table, then each row's compile time and agreement check."""
    table = ratio_table(rows, TARGETS)
    notes = [
        f"- {r['name']}: compile {r['compile_s']:.1f} s"
        + (
            f"; first-step loss {r['first_loss_ours']:.6f} (ours) vs {r['first_loss_theirs']:.6f} (open_clip)"
            if "first_loss_ours" in r
            else f"; max |ours - open_clip| = {r['max_abs_diff']:.1e}"
        )
        + (
            f"; ours encodes {r['tokens_encoded']} token positions per prompt (trim_tokens), open_clip 77"
            if "tokens_encoded" in r
            else ""
        )
        for r in rows
    ]
    threads = sorted({r["torch_threads"] for r in rows})
    flags = sorted({r["xla_flags"] for r in rows})
    return "\n".join(
        [
            table,
            "",
            f"torch threads: {threads}; XLA_FLAGS: {flags}; ours compile time (not in step time):",
            *notes,
        ]
    )


def main() -> None:
    """The command line (module docstring); the XLA:CPU investigation is benchmarks/cpu_sweep.py's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 (train 8), 2 repeats")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"subset of {','.join(BENCHMARKS)},gemm")
    parser.add_argument("--batch", type=int, default=None, help="inference batch (default 16)")
    parser.add_argument("--train-batch", type=int, default=None, help="train-step batch (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--variants", default="default", help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--xla-flags", default=None, help="appended to XLA_FLAGS before jax starts")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line as well")
    args = parser.parse_args()
    models, only, variants = (tuple(a.split(",")) for a in (args.models, args.only, args.variants))
    # Bad names fail here, before minutes of building models, with the option that holds them.
    for name in models:
        try:
            model_config(name)
        except ValueError as e:
            parser.error(f"--models {name}: {e}")
    for given, known, flag in (
        (only, (*BENCHMARKS, "gemm"), "--only"),
        (variants, tuple(VARIANTS), "--variants"),
    ):
        unknown = [x for x in given if x not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    rows = run(
        quick=args.quick,
        models=models,
        only=only,
        batch=args.batch,
        train_batch=args.train_batch,
        repeats=args.repeats,
        variants=variants,
    )
    print(to_markdown(rows))
    if args.json:
        emit_result(rows)


if __name__ == "__main__":
    main()
