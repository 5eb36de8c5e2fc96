"""The reference for benchmarks/gpu_train_step.py: an open_clip train step as open_clip's trainer runs it.

    python benchmarks/gpu_openclip_reference.py --model ViT-B-16 --batch 1024 --steps 20

`open_clip.create_model(name, pretrained=None)` (fp32 parameters, random init), `--precision amp_bf16`
semantics (the forward and loss under `torch.autocast(device, torch.bfloat16)`, no grad scaler),
`open_clip.ClipLoss`, `torch.optim.AdamW` with open_clip's two parameter groups (no weight decay on
gains, biases and logit_scale) and betas/eps of CLIP, then the logit-scale clamp to log(100), all as in
open_clip_train's `train_one_epoch`. Synthetic inputs on the device. Prints one line
"RESULT_JSON {...}" with the median step time and images/s; an out-of-memory error is reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

RESULT_PREFIX = "RESULT_JSON "


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip
    import torch

    device = torch.device(args.device if args.device else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    if args.model not in open_clip.list_models():
        _register_clip_jax_config(open_clip, args.model)
    model = open_clip.create_model(args.model, pretrained=None, output_dict=True).to(device)
    model.train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)

    # open_clip_train/main.py: 1-d params, norms, biases and logit_scale get no weight decay.
    def exclude(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
        ],
        lr=5e-4,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    forward = torch.compile(model) if args.compile else model

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx, vocab = model.context_length, model.vocab_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    texts = torch.randint(1, vocab - 1, (args.batch, ctx), device=device)
    texts[:, -1] = vocab - 1  # EOT, the largest id, where the text tower pools

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = forward(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    out: dict[str, Any] = {
        "model": args.model,
        "batch": args.batch,
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "mode": ("torch.compile" if args.compile else "eager")
        + " AMP bf16"
        + (" + grad checkpointing" if args.grad_checkpointing else ""),
        "warmup_s": warmup_s,
        "steps": args.steps,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "images_per_s": args.batch / median,
        "loss": float(loss),
    }
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def _register_clip_jax_config(open_clip: Any, name: str) -> None:
    """Make a clip_jax-only config (e.g. 'tiny', for smoke tests) known to open_clip's factory."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clip_jax.models import get_model_config

    c = get_model_config(name)
    open_clip.factory._MODEL_CONFIGS[name] = c.to_open_clip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (open_clip --torchcompile)"
    )
    p.add_argument("--grad-checkpointing", action="store_true")
    args = p.parse_args()
    try:
        result = measure(args)
    except Exception as e:  # report OOM and other failures as a result line, not a traceback only
        kind = "OOM" if "out of memory" in str(e).lower() else "failed"
        result = {"model": args.model, "batch": args.batch, "error": kind, "stderr_tail": repr(e)[:500]}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
