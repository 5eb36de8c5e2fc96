"""The training config schema (every field with its default), its validation, and model resolution.

Config files start from `default_config()` and change fields; a field that is not in the schema is an
error that names it, so a typo never silently trains with a default.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import ml_collections

from clip_jax.models.config import CLIPConfig, get_model_config
from clip_jax.train.optim import NO_DECAY

LOSSES = ("softmax", "sigmoid")
DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # A named model (clip_jax.models.MODEL_CONFIGS, e.g. "ViT-B-32") or, set inside
    # `with c.ignore_type():`, an inline dict in CLIPConfig's form {"embed_dim", "vision", "text", ...},
    # optionally with "base": NAME to change only some fields of a named model.
    c.model = "ViT-B-32"
    c.dtype = "float32"  # compute dtype; params and optimizer state stay float32
    c.scan = False  # nn.scan over layers (faster compiles for deep models)
    c.remat_policy = "none"  # none | full | dots | dots_no_batch
    # "": clip_jax's heads-major XLA attention; "xla" / "cudnn": jax.nn.dot_product_attention's
    # ("cudnn" on GPUs in bf16/fp16: ViT-B/16 train step 1.4x faster than with "xla" on an H100).
    c.attention_impl = ""
    c.patch_dropout = 0.0  # FLIP: fraction of image patches dropped during training

    c.batch_size = 256  # global, over all devices and processes
    c.accum_steps = 1  # micro-batches per step; exact for contrastive losses
    c.total_steps = 1000
    c.seed = 0
    c.loss = "softmax"  # softmax (CLIP) | sigmoid (SigLIP; needs a model with init_logit_bias)
    c.sharded_loss = True  # shard_map loss that never builds the global B x B logits

    c.lr = 5e-4
    c.warmup_steps = 100
    c.end_lr_ratio = 0.0
    c.weight_decay = 0.2
    c.b1 = 0.9
    c.b2 = 0.98
    c.eps = 1e-6
    c.grad_clip_norm = 0.0  # 0 disables clipping
    # Regexes of parameter paths without weight decay; the default is open_clip's rule (clip_jax/train/optim.py).
    c.no_decay = NO_DECAY
    c.freeze = ()  # regexes of parameter paths to freeze; LiT: ("^visual/",)
    c.lr_mults = ()  # ((regex, multiplier), ...); the last matching rule wins

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1: remaining devices

    # Weights to start from: a clip_jax training run (its newest complete checkpoint), a converted orbax
    # dir, an open_clip/HF/OpenAI file.
    c.init_from = ""
    # Regexes of the parameter paths taken from init_from, the rest initialised fresh (all if empty). LiT
    # is init_from_only=("^visual/",) with freeze=("^visual/",): a locked pretrained image tower.
    c.init_from_only = ()
    c.init_from_model = ""  # model name for init_from when it cannot be inferred (quickgelu)

    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.log_every = 10
    c.prefetch = 2  # batches of a tf.data input read and placed on the devices ahead, in a thread (0: off)
    c.eval_every = 0  # 0: only at the end (if evaluations are configured)

    # "random": RandomBatches (distinct_batches: 0 for an endless stream, n to cycle through n batches).
    c.data = ml_collections.ConfigDict({"source": "random", "distinct_batches": 0})
    # Evaluations run every eval_every steps and at the end, by name: {"type": zeroshot | robustness |
    # linear_probe | retrieval, and that type's fields} (clip_jax/eval/common.py), e.g.
    # c.evals.shape = {"type": "zeroshot", "dataset": "clip_synthetic", "task": "shape"}.
    c.evals = ml_collections.ConfigDict()
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """The `key=value,...` argument of a config file (`--config configs/x.py:res=64,loss=sigmoid`), over
    `defaults`: big_vision's idiom, which lets one config file serve a family of runs (and a sweep).

    Each value is read as its default's type: bools from true/false/1/0, numbers, tuples and lists as
    Python literals; strings as written. A key without a default is an error naming it. Commas inside
    brackets or quotes do not split.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in split_top_level(arg or ""):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(f"config argument {item!r}: expected key=value with key in {sorted(defaults)}")
        out[key] = _parse_value(text.strip(), defaults[key], key)
    return out


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes (the items of a config argument)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _parse_value(text: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config argument {key}={text!r}: expected true or false")
    if isinstance(default, str) or default is None:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"config argument {key}={text!r} is not a {type(default).__name__}") from e
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        value = type(default)(value)
    if not isinstance(value, type(default)):
        raise ValueError(f"config argument {key}={text!r} is not a {type(default).__name__}")
    return value


def validate_config(config: ml_collections.ConfigDict) -> CLIPConfig:
    """The model's config, once every field is checked; ValueError naming the first unknown or invalid one."""
    if "eval" in config:
        raise ValueError("config.eval.zeroshot is now config.evals.<name> = {'type': 'zeroshot', ...}")
    _check_fields(config, default_config(), "config")
    if config.loss not in LOSSES:
        raise ValueError(f"config.loss={config.loss!r}; choose from {LOSSES}")
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r}; choose from {DTYPES}")
    for field in ("batch_size", "total_steps", "accum_steps", "log_every", "checkpoint_every"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field} must be >= 1, got {config[field]}")
    if config.batch_size % config.accum_steps:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by config.accum_steps")
    if not 0.0 <= config.patch_dropout < 1.0:
        raise ValueError(f"config.patch_dropout must be in [0, 1), got {config.patch_dropout}")
    _check_optimizer(config)
    from clip_jax.eval.common import check_evals_config

    check_evals_config(config.evals)
    model_cfg = resolve_model_config(config.model)
    if config.loss == "sigmoid" and model_cfg.init_logit_bias is None:
        raise ValueError("config.loss='sigmoid' needs a model with init_logit_bias (e.g. -10)")
    if model_cfg.family != "clip":
        # The input pipeline tokenizes captions with CLIP's BPE (clip_jax/data/tf_ops.py tf_tokenize):
        # a SigLIP text tower would learn from, and be evaluated on, ids of another vocabulary.
        raise ValueError(
            f"config.model: a {model_cfg.family} text tower (text.pool_type={model_cfg.text.pool_type!r}) "
            "reads its own sentencepiece ids, but training tokenizes captions with CLIP's BPE"
        )
    return model_cfg


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
    checks = [
        ("lr", config.lr > 0, "must be > 0"),
        ("weight_decay", config.weight_decay >= 0, "must be >= 0"),
        ("b1", 0 < config.b1 < 1, "must be in (0, 1)"),
        ("b2", 0 < config.b2 < 1, "must be in (0, 1)"),
        ("eps", config.eps > 0, "must be > 0"),
        (
            "warmup_steps",
            0 <= config.warmup_steps <= config.total_steps,
            "must be in [0, config.total_steps]",
        ),
        ("end_lr_ratio", 0 <= config.end_lr_ratio <= 1, "must be in [0, 1]"),
        ("grad_clip_norm", config.grad_clip_norm >= 0, "must be >= 0 (0 disables clipping)"),
        ("keep_checkpoints", config.keep_checkpoints >= 1, "must be >= 1"),
        ("prefetch", config.prefetch >= 0, "must be >= 0 (0: no prefetch thread)"),
    ]
    for field, ok, rule in checks:
        if not ok:
            raise ValueError(f"config.{field}={config[field]!r} {rule}")
    if config.init_from_only and not config.init_from:
        raise ValueError("config.init_from_only is set but config.init_from is empty")
    for field in ("no_decay", "freeze", "init_from_only"):
        for regex in config[field]:
            try:
                re.compile(regex)
            except (re.error, TypeError) as e:
                raise ValueError(f"config.{field} has an invalid regex {regex!r}: {e}") from e


# Sections whose sub-fields belong to other modules (data sources, evaluators) and are checked there.
_OPEN_SECTIONS = ("data", "evals", "model")


def _check_fields(config: Any, schema: Any, where: str) -> None:
    for key in config.keys():
        if key not in schema:
            raise ValueError(f"unknown field {where}.{key}; known fields: {sorted(schema.keys())}")
        sub, ref = config[key], schema[key]
        if key in _OPEN_SECTIONS and where == "config":
            continue
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(sub, ml_collections.ConfigDict):
                raise ValueError(f"{where}.{key} must be a section like {ref.to_dict()}")
            _check_fields(sub, ref, f"{where}.{key}")


def resolve_model_config(model: Any) -> CLIPConfig:
    """config.model: a name from clip_jax.models.MODEL_CONFIGS, or an inline dict in CLIPConfig's form."""
    if isinstance(model, str):
        return get_model_config(model)
    if isinstance(model, CLIPConfig):
        return model
    if isinstance(model, ml_collections.ConfigDict):
        model = model.to_dict()
    if isinstance(model, dict):
        model = dict(model)
        base = model.pop("base", None)
        if base is not None:
            merged = get_model_config(base).to_dict()
            for k, v in model.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) else v
            model = merged
        return CLIPConfig.from_dict(model)
    raise ValueError(f"config.model must be a model name or a dict, got {type(model).__name__}")
