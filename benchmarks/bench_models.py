"""Image/text tower inference and the full train step: clip_jax vs open_clip on one random model.

    python benchmarks/bench_models.py                       # all benchmarks, default sizes
    python benchmarks/bench_models.py --quick               # small batches, 2 repeats (smoke test)
    python benchmarks/bench_models.py --only image --models ViT-B-16 --batch 8 --variants default,before_rows
    python benchmarks/bench_models.py --xla-flags=--xla_cpu_use_thunk_runtime=false

Both sides compute the same function: one random open_clip model (`open_clip.create_model(name,
pretrained=None)`) is converted with the project's converter (`clip_jax.weights.load.convert_state_dict`),
and before anything is timed the outputs are asserted to agree (features to 1e-4; for the train step,
the loss of the first step on the same batch). Same config, batch, fp32, one process, default thread
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
in clip_jax/models: they are applied by patching the model classes inside this process (see VARIANTS).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # XLA reads its flags when the backend starts, so --xla-flags must be applied before jax is imported.
    _early = argparse.ArgumentParser(add_help=False)
    _early.add_argument("--xla-flags", default=None)
    _xla_flags = _early.parse_known_args()[0].xla_flags
    if _xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _xla_flags).strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import alternate, ratio_table, throughput_row  # noqa: E402
from clip_jax.models import CLIP, CLIPConfig, stack_layers  # noqa: E402
from clip_jax.models import transformer as transformer_mod  # noqa: E402
from clip_jax.models import vit as vit_mod  # noqa: E402
from clip_jax.models.config import MODEL_CONFIGS  # noqa: E402
from clip_jax.train.optim import make_optimizer  # noqa: E402
from clip_jax.train.random_batches import RandomBatches  # noqa: E402
from clip_jax.train.step import init_train_state, make_train_step  # noqa: E402
from clip_jax.weights.load import OpenClipStateDict, convert_state_dict  # noqa: E402

MODELS = ("ViT-B-32", "ViT-B-16")
BENCHMARKS = ("image", "text", "zeroshot", "train")
TRAIN_MODEL = "ViT-B-32"
TARGETS = {"image": 1.2, "text": 1.2, "train": 1.2}
# Features are O(1); the two frameworks sum in different orders, so agreement is to float32 rounding.
ATOL = 1e-4
LR, WEIGHT_DECAY, BETAS, EPS = 5e-4, 0.2, (0.9, 0.98), 1e-6


# --------------------------------------------------------------------------------------------------
# The model pair
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    name: str
    cfg: CLIPConfig
    torch_model: Any  # open_clip.model.CLIP, eval mode
    params: dict  # per-layer numpy params converted from torch_model's state dict


def model_config(name: str) -> CLIPConfig:
    """clip_jax's config of the open_clip model `name` (any open_clip ViT, through the translator)."""
    import open_clip

    open_clip_cfg = open_clip.get_model_config(name)
    if open_clip_cfg is None:
        raise ValueError(f"{name!r} is not an open_clip model config (open_clip.list_models() has them)")
    return MODEL_CONFIGS.get(name) or CLIPConfig.from_open_clip(open_clip_cfg)


def make_pair(name: str, seed: int = 0) -> Pair:
    """A random open_clip model and the same weights as clip_jax params (via the project's converter)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    state_dict = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    cfg = model_config(name)
    ckpt = OpenClipStateDict(state_dict, Path(f"<random open_clip {name}>"), "open_clip")
    params = convert_state_dict(ckpt, cfg, what=f"model {name!r}")
    return Pair(name, cfg, model, params)


def random_batch(cfg: CLIPConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normal images [B, H, W, 3] and token ids with SOT ... EOT and zero padding."""
    it = RandomBatches(
        global_batch_size=batch,
        image_size=cfg.vision.image_size,
        context_length=cfg.text.context_length,
        seed=seed,
    )
    return next(it)


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {
        "image": torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))),
        "text": torch.from_numpy(batch["text"].astype(np.int64)),
    }


# --------------------------------------------------------------------------------------------------
# Variants of our side (measured here before any change is made to clip_jax/models)
# --------------------------------------------------------------------------------------------------


class EinsumAttention(transformer_mod.Attention):
    """Attention as two einsums and a softmax on the [B, L, H, D] layout (the model's default makes
    heads-major copies first). With `query_rows` (the model's last block), every row is attended and the
    pooled rows kept."""

    @nn.compact
    def __call__(self, x: jax.Array, query_rows: jax.Array | None = None) -> jax.Array:
        q, k, v = transformer_mod.QKVProjection(
            self.heads, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv"
        )(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k)
        if self.causal:
            n = x.shape[1]
            logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        if query_rows is not None:
            out = transformer_mod.take_rows(out, query_rows)
        return transformer_mod.AttentionOut(dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)


class PackedQKV(transformer_mod.QKVProjection):
    """q, k, v from one [B*L, W] x [W, 3*H*D] matmul and a split (the model uses three matmuls)."""

    def product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return transformer_mod.dense_on_rows(x, kernel)

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        width = x.shape[-1]
        shape = (width, 3, self.heads, width // self.heads)
        kernel = self.param("kernel", nn.initializers.zeros, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape[1:], self.param_dtype)
        qkv = self.product(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


class Projections3D:
    """The model's layout before it moved to row matmuls (dense_on_rows): every projection as an
    einsum or nn.Dense on [B, L, ...] activations, q/k/v from one packed einsum."""

    class QKV(PackedQKV):
        def product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
            return jnp.einsum("bld,dthk->blthk", x, kernel)

    class Out(transformer_mod.AttentionOut):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            heads, head_dim = x.shape[-2:]
            width = heads * head_dim
            kernel = self.param("kernel", nn.initializers.zeros, (heads, head_dim, width), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (width,), self.param_dtype)
            return jnp.einsum("blhk,hkd->bld", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)

    class MLP(transformer_mod.MLP):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            h = nn.Dense(self.mlp_width, name="c_fc", **kw)(x)
            h = transformer_mod.activation_fn(self.quick_gelu)(h)
            return nn.Dense(x.shape[-1], name="c_proj", **kw)(h)


class ConvPatchEmbed(vit_mod.PatchEmbed):
    """The patch embedding as the strided convolution that PatchEmbed replaced (same [p, p, 3, W] kernel)."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        shape = (p, p, images.shape[-1], self.width)
        kernel = self.param("kernel", nn.initializers.zeros, shape, self.param_dtype)
        x = jax.lax.conv_general_dilated(
            images, kernel.astype(self.dtype), (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return x.reshape(x.shape[0], -1, self.width)


class FullLastBlock(transformer_mod.ResidualAttentionBlock):
    """The last block computed on every row and the pooled row picked afterwards (the model computes
    only the pooled row past the keys and values)."""

    def __call__(self, x: jax.Array, _: Any = None, out_rows: jax.Array | None = None) -> tuple:
        y, hidden = super().__call__(x, _)
        return (y if out_rows is None else transformer_mod.take_rows(y, out_rows)), hidden


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How our side is built: CLIP keyword arguments, class patches active while tracing, tolerance."""

    name: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
    scan: bool = False
    atol: float = ATOL

    def model(self, cfg: CLIPConfig) -> CLIP:
        return CLIP(cfg, scan=self.scan, **dict(self.model_kwargs))

    def params(self, params: dict) -> dict:
        return stack_layers(params) if self.scan else params

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for make in self.patches:
                stack.enter_context(make())
            yield


_3D = (
    lambda: _patched(transformer_mod, "QKVProjection", Projections3D.QKV),
    lambda: _patched(transformer_mod, "AttentionOut", Projections3D.Out),
    lambda: _patched(transformer_mod, "MLP", Projections3D.MLP),
)
_CONV = (lambda: _patched(vit_mod, "PatchEmbed", ConvPatchEmbed),)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("default"),
        # The layout the model had before this investigation: 3-D projections and a strided conv.
        Variant("before_rows", patches=(*_3D, *_CONV)),
        Variant("proj_3d", patches=_3D),
        Variant("conv_patch", patches=_CONV),
        Variant(
            "full_last_block",
            patches=(lambda: _patched(transformer_mod, "ResidualAttentionBlock", FullLastBlock),),
        ),
        Variant("packed_qkv", patches=(lambda: _patched(transformer_mod, "QKVProjection", PackedQKV),)),
        Variant("attn_xla", (("attention_impl", "xla"),)),
        Variant("attn_einsum", patches=(lambda: _patched(transformer_mod, "Attention", EinsumAttention),)),
        Variant("scan", scan=True),
        Variant("bf16", (("dtype", jnp.bfloat16),), atol=5e-2),
    )
}


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


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

    max_diff = float(np.max(np.abs(np.asarray(ours(), np.float32) - theirs().numpy())))
    if not max_diff <= variant.atol:
        raise AssertionError(f"{pair.name} {tower} ({variant.name}): max |ours - open_clip| = {max_diff:.2e}")
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
    if not abs(ours_loss - theirs_loss) <= variant.atol:
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
        _log(rows[-1])
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
                    _log(rows[-1])
            # The classifier is the text tower's work only: one row per distinct text tower (ViT-B-32 and
            # ViT-B-16 share theirs).
            text_tower = (pair.cfg.text, pair.cfg.embed_dim, pair.cfg.quick_gelu)
            if "zeroshot" in only and v == "default" and text_tower not in zeroshot_done:
                zeroshot_done.add(text_tower)
                rows.append(bench_zeroshot(pair, 2 if quick else 4, repeats))
                _log(rows[-1])
            if "train" in only and name == (TRAIN_MODEL if TRAIN_MODEL in models else models[0]):
                rows.append(
                    bench_train_step(
                        pair, train_batch, max(1, repeats - 2) if not quick else repeats, variant
                    )
                )
                _log(rows[-1])
        del pair
    return rows


def _log(row: dict) -> None:
    print(
        f"  {row['name']}: ours {row['ours_s']:.3f} s, open_clip {row['theirs_s']:.3f} s, ratio {row['ratio']:.2f}x"
        f" (by CPU time {row['cpu_ratio']:.2f}x; compile {row.get('compile_s', float('nan')):.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def to_markdown(rows: list[dict]) -> str:
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


# --------------------------------------------------------------------------------------------------
# The XLA:CPU investigation: flags, thread counts, model variants, batch sizes
# --------------------------------------------------------------------------------------------------

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
JSON_PREFIX = "BENCH_MODELS_JSON "


def _subprocess_rows(args: list[str], flags: str = "", one_core: bool = False) -> list[dict]:
    """Run this script in a child process (own XLA_FLAGS, optionally pinned to one core) and parse its rows."""
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", *args]
    if flags:
        cmd.append(f"--xla-flags={flags}")
    if one_core:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_PREFIX)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return json.loads(lines[-1][len(JSON_PREFIX) :])


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
            _log(rows[-1])

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


def variants_markdown(rows: list[dict]) -> str:
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 (train 8), 2 repeats")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"subset of {','.join(BENCHMARKS)},gemm")
    parser.add_argument("--batch", type=int, default=None, help="inference batch (default 16)")
    parser.add_argument("--train-batch", type=int, default=None, help="train-step batch (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--variants", default="default", help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--xla-flags", default=None, help="appended to XLA_FLAGS before jax starts")
    parser.add_argument("--sweep", action="store_true", help="the XLA:CPU investigation (long)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line as well")
    args = parser.parse_args()
    if args.sweep:
        print(variants_markdown(sweep(quick=args.quick)))
        return
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
        import json

        print(JSON_PREFIX + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
