"""A SigLIP train step, sigmoid loss, beside open_clip's: ViT-B-16-SigLIP, fp32, on this CPU.

    python benchmarks/bench_siglip_train.py                  # batch 8, 5 timed steps each
    python benchmarks/bench_siglip_train.py --batch 16 --repeats 7
    python benchmarks/bench_siglip_train.py --quick          # batch 2, 2 timed steps (smoke test)

Both sides take one step as their trainers do: forward both towers, the sigmoid loss with the learned
logit scale and bias, backward, AdamW, the logit-scale clamp to [0, log 100].
- open_clip: `open_clip.create_model('ViT-B-16-SigLIP', pretrained=None)` (timm's image trunk, open_clip's
  SigLIP text tower), train mode, `open_clip.loss.SigLipLoss`, `torch.optim.AdamW` with open_clip_train's
  two parameter groups (no decay on 1-D tensors, norms, biases, logit_scale; the logit bias is a bias).
- clip_jax: the same weights read by `clip_jax.load_pretrained` into `open_clip_gelu(name)` (each tower's
  GELU as open_clip computes it: exact erf in both; the named config computes big_vision's tanh GELU,
  another function), `make_train_step(loss="sigmoid")` + `make_optimizer` (AdamW, its no-decay rules are
  open_clip_train's), jitted with the state donated; compile time reported apart.
Same hyperparameters (lr 5e-4 constant, betas (0.9, 0.98), eps 1e-6, weight decay 0.2), same batch of
random images and random token ids (SigLIP reads every one of its 64 positions).

open_clip's init leaves LayerNorms at 1 and 0 and biases at 0, where a loader that dropped them would still
agree; they are perturbed first (as bench_families does). Before timing, the first step's losses (same
weights, same batch) must agree to `loss_tolerance`, a bound from fp32 rounding; the loss of every later
step is recorded on both sides too, so the table shows how far the two runs drift once the optimizer
has acted on gradients that differ in their last bits.

Timing is `common.alternate` (ours and theirs back to back, order flipped each round; medians), in one
process, torch with as many threads as XLA:CPU's intra-op pool (one per core of this process's
affinity). The record names the CPU (`clip_jax.machine.cpu_name`) and the load average before and after:
the other processes sharing the CPU slow both sides, so compare the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, emit_result, ratio_table, throughput_row  # noqa: E402

MODEL = "ViT-B-16-SigLIP"
# open_clip_train's defaults (as bench_models' CLIP train step), constant: no warmup, no decay.
LR, WEIGHT_DECAY, BETAS, EPS = 5e-4, 0.2, (0.9, 0.98), 1e-6
FP32_UNIT_ROUNDOFF = 2.0**-24


def cores() -> int:
    """The cores this process may run on: XLA:CPU sizes its intra-op pool by them, torch gets as many."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def perturbed_open_clip(name: str, seed: int = 0) -> Any:
    """`open_clip.create_model(name, pretrained=None)` with every LayerNorm scale 1 + N(0, 0.1^2) and every
    bias moved by N(0, 0.02^2): at their inits (1 and 0) a mapping that dropped them would pass the check."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in pname or "ln_" in pname) and pname.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif pname.endswith("bias"):
                p.add_(0.02 * noise)
    return model


def loss_tolerance(img: Any, txt: Any, scale: float, bias: float, layers: int) -> float:
    """Allowed |ours - open_clip| of the sigmoid loss, from fp32 rounding, given open_clip's unit features.

    Each tower rounds its activations about 10 times per block; along the deepest path those n = 10 * layers
    + 10 roundings of relative size u = 2^-24 add up like a random walk, and 4 sqrt(n) u (model_variants'
    bound) covers its tails: e of each unit feature. A cosine then moves by at most 2e, plus sqrt(E) u for
    its own dot product, so a logit z = scale * cos + bias by dz = scale * (2e + sqrt(E) u). The loss moves
    by dz times the L1 norm of its gradient in the logits, (1/B) sum_ij sigmoid(-y_ij z_ij), plus the
    rounding of its own sum of B^2 terms. Measured from open_clip's side, in float64.
    """
    import numpy as np

    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    batch, dim = img.shape
    u = FP32_UNIT_ROUNDOFF
    feature_err = 4 * math.sqrt(10 * layers + 10) * u
    dz = scale * (2 * feature_err + math.sqrt(dim) * u)
    z = scale * img @ txt.T + bias
    y = 2 * np.eye(batch) - 1
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    grad_l1 = float(np.sum(sigmoid(-y * z))) / batch
    loss = float(np.sum(np.logaddexp(0, -y * z))) / batch
    return grad_l1 * dz + batch * batch * u * loss


def torch_train_step(model: Any, images: Any, texts: Any) -> Callable[[], float]:
    """open_clip_train's SigLIP step (fp32, no AMP, one process): its loss, parameter groups and clamp."""
    import open_clip
    import torch

    model.train()
    # open_clip_train/main.py: no weight decay on 1-d tensors, norms, biases (logit_bias too), logit_scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WEIGHT_DECAY},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    loss_fn = open_clip.loss.SigLipLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        img, txt, scale, bias = model(images, texts)
        loss = loss_fn(img, txt, scale, bias)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    return step


def run(model_name: str = MODEL, batch: int = 8, repeats: int = 5, seed: int = 0) -> dict:
    """One row: images/s of both train steps on `batch` pairs, the ratio ours/open_clip, the loss check."""
    import torch
    import torchvision  # noqa: F401  (before tensorflow, which clip_jax's imports may pull in)

    threads = cores()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]

    import jax
    import numpy as np
    from safetensors.torch import save_file

    from clip_jax import load_pretrained
    from clip_jax.machine import cpu_name
    from clip_jax.models.config import open_clip_gelu
    from clip_jax.train.optim import make_optimizer
    from clip_jax.train.step import init_train_state, make_train_step

    ref = perturbed_open_clip(model_name, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        model, params = load_pretrained(open_clip_gelu(model_name), path)
    cfg = model.cfg

    rng = np.random.default_rng(seed + 2)
    size = cfg.vision.image_size
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    tokens = rng.integers(0, cfg.text.vocab_size, (batch, cfg.text.context_length), dtype=np.int32)
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    tokens_t = torch.from_numpy(tokens).long()

    # The tolerance from open_clip's features of this batch, before either side has taken a step.
    with torch.no_grad():
        r_img, r_txt, r_scale, r_bias = ref.eval()(images_t, tokens_t)
    tolerance = loss_tolerance(
        r_img.numpy(), r_txt.numpy(), r_scale.item(), r_bias.item(), max(cfg.vision.layers, cfg.text.layers)
    )

    # Constant lr: with total_steps this large the cosine's first steps round to lr itself in float32.
    tx, _ = make_optimizer(
        params,
        lr=LR,
        total_steps=10**9,
        warmup_steps=0,
        weight_decay=WEIGHT_DECAY,
        b1=BETAS[0],
        b2=BETAS[1],
        eps=EPS,
    )
    state = init_train_state(params, tx, jax.random.key(seed))
    batch_j = jax.device_put({"image": images, "text": tokens})
    start = time.perf_counter()
    compiled = (
        jax.jit(make_train_step(model, tx, loss="sigmoid"), donate_argnums=0).lower(state, batch_j).compile()
    )
    compile_s = time.perf_counter() - start

    holder = {"state": state}
    losses: dict[str, list[float]] = {"ours": [], "theirs": []}

    def ours() -> None:
        holder["state"], metrics = compiled(holder["state"], batch_j)
        jax.block_until_ready(holder["state"])
        losses["ours"].append(float(metrics["loss"]))

    torch_step = torch_train_step(ref, images_t, tokens_t)

    def theirs() -> None:
        losses["theirs"].append(torch_step())

    # The first step of each: same weights, same batch, so the same loss (and the warm-up of both).
    ours()
    theirs()
    first_diff = abs(losses["ours"][0] - losses["theirs"][0])
    if not first_diff <= tolerance:
        raise AssertionError(
            f"{model_name} sigmoid-loss train step: first loss {losses['ours'][0]!r} (clip_jax) vs "
            f"{losses['theirs'][0]!r} (open_clip), |diff| {first_diff:.2e} > fp32 bound {tolerance:.2e}"
        )
    timings = alternate(ours, theirs, repeats, warmup=0)
    return throughput_row(
        f"{model_name} train step, sigmoid loss (fp32, batch {batch})",
        "images/s",
        batch,
        timings,
        benchmark="siglip_train",
        target="train",
        model=model_name,
        batch=batch,
        cpu=cpu_name(),
        threads=threads,
        torch_threads=torch.get_num_threads(),
        load_before=load_before,
        load_after=os.getloadavg()[0],
        compile_s=compile_s,
        loss_tolerance=tolerance,
        first_loss_diff=first_diff,
        losses_ours=losses["ours"],
        losses_theirs=losses["theirs"],
    )


def to_markdown(result: dict | list[dict]) -> str:
    """RESULTS.md's section: the ratio table, the CPU, threads and load, and the losses of both runs."""
    rows = result if isinstance(result, list) else [result]
    notes = []
    for r in rows:
        drift = max(abs(a - b) for a, b in zip(r["losses_ours"], r["losses_theirs"], strict=True))
        notes.append(
            f"CPU: {r['cpu']}; {r['threads']} core{'s' * (r['threads'] != 1)}, used by both (torch threads {r['torch_threads']}, "
            f"XLA:CPU one intra-op thread per core); load average {r['load_before']:.1f} before, "
            f"{r['load_after']:.1f} after; ours compile {r['compile_s']:.1f} s (not in the step time). "
            f"First-step loss {r['losses_ours'][0]:.6f} (clip_jax) vs {r['losses_theirs'][0]:.6f} (open_clip): "
            f"|diff| {r['first_loss_diff']:.1e}, fp32 bound {r['loss_tolerance']:.1e}. Over all "
            f"{len(r['losses_ours'])} steps of each side the losses differ by at most {drift:.1e} "
            f"(clip_jax {', '.join(f'{x:.4f}' for x in r['losses_ours'])}; "
            f"open_clip {', '.join(f'{x:.4f}' for x in r['losses_theirs'])})."
        )
    return ratio_table(rows) + "\n\n" + "\n\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL, help="an open_clip SigLIP config (default ViT-B-16-SigLIP)")
    parser.add_argument("--batch", type=int, default=None, help="image-text pairs per step (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps of each side (default 5)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the row as one JSON line as well")
    args = parser.parse_args()
    from clip_jax.models.config import open_clip_gelu

    try:  # a bad name fails here, before a minute of building models
        open_clip_gelu(args.model)
    except ValueError as e:
        parser.error(f"--model: {e}")
    batch = args.batch or (2 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 5)
    row = run(args.model, batch, repeats)
    print(to_markdown(row))
    if args.json:
        emit_result(row)
    else:
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}))


if __name__ == "__main__":
    main()
