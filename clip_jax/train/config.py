"""The training config schema (every field with its default), its validation, and model resolution.

Config files start from `default_config()` and change fields; a field that is not in the schema is an
error that names it, so a typo never silently trains with a default.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import textwrap
import tokenize
from typing import Any

import ml_collections

from clip_jax.models.config import CLIPConfig, resolve_model_config
from clip_jax.train.distill import check_distill_config
from clip_jax.train.optim import NO_DECAY
from clip_jax.train.schedules import check_schedule_config

LOSSES = ("softmax", "sigmoid")
DTYPES = ("float32", "bfloat16", "float16")
REPORT_TO = ("tensorboard", "wandb")
# The source of noise batches for benchmarks and tests (clip_jax/train/random_batches.py); the real
# sources are clip_jax.data.SOURCES.
RANDOM_SOURCE = "random"


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

    c.batch_size = 256  # images per step, global: over all devices and processes
    c.accum_steps = 1  # micro-batches per step; exact for contrastive losses
    c.total_steps = 1000  # length of the run in optimizer steps
    c.seed = 0  # seeds the initial parameters, patch dropout and the data order
    c.loss = "softmax"  # softmax (CLIP) | sigmoid (SigLIP; needs a model with init_logit_bias)
    c.sharded_loss = True  # shard_map loss that never builds the global B x B logits

    c.lr = 5e-4  # peak learning rate, reached after warmup_steps
    c.warmup_steps = 100  # linear warmup steps (at most total_steps); then the schedule
    # cosine | const | const-cooldown (open_clip's) | rsqrt | linear (big_vision's): clip_jax/train/schedules.py
    c.schedule = "cosine"
    c.end_lr_ratio = 0.0  # cosine, const-cooldown and linear end at lr * end_lr_ratio
    # Steps of the final decay: const-cooldown's (open_clip's --epochs-cooldown, in steps); big_vision's
    # linear cooldown to 0 on top of rsqrt and linear.
    c.cooldown_steps = 0
    c.cooldown_power = 1.0  # const-cooldown decays as (1 - t) ** power (open_clip's --lr-cooldown-power)
    c.rsqrt_timescale = 10_000  # rsqrt: lr / sqrt(1 + (step - warmup_steps) / rsqrt_timescale)
    c.weight_decay = 0.2  # AdamW's decoupled weight decay, on the parameters no_decay does not match
    c.b1 = 0.9  # AdamW beta1
    c.b2 = 0.98  # AdamW beta2 (open_clip's)
    c.eps = 1e-6  # AdamW epsilon (open_clip's)
    c.grad_clip_norm = 0.0  # 0 disables clipping
    # Regexes of parameter paths without weight decay; the default is open_clip's rule (clip_jax/train/optim.py).
    c.no_decay = NO_DECAY
    c.freeze = ()  # regexes of parameter paths to freeze; LiT: ("^visual/",)
    c.lr_mults = ()  # ((regex, multiplier), ...); the last matching rule wins
    # Decay of an exponential moving average of the params (clip_jax/train/ema.py), e.g. 0.999; 0: no EMA.
    # Kept in the train state and checkpoints; evaluations also run on it (metrics eval_ema/<name>/...).
    c.ema_decay = 0.0
    # Warm the decay up by tf.train.ExponentialMovingAverage's num_updates rule: at step t the decay is
    # min(ema_decay, (1 + t) / (10 + t)).
    c.ema_warmup = False

    # Devices per mesh axis (-1: the remaining devices): the batch is split over data x fsdp, parameters and
    # optimizer state over fsdp (ZeRO-3) and tensor (Megatron: heads and MLP).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # Weights to start from: a clip_jax training run (its newest complete checkpoint), a converted orbax
    # dir, an open_clip/HF/OpenAI file.
    c.init_from = ""
    # Regexes of the parameter paths taken from init_from, the rest initialised fresh (all if empty). LiT
    # is init_from_only=("^visual/",) with freeze=("^visual/",): a locked pretrained image tower.
    c.init_from_only = ()
    # Cooldown branch: a new run that goes on from another run's checkpoint, "<workdir>" (its newest step)
    # or "<workdir>/checkpoints/<step>", with its params, optimizer state and data position (train/branch.py).
    c.branch_from = ""
    c.init_from_model = ""  # model name for init_from when it cannot be inferred (quickgelu)
    # Distillation (open_clip's --distill-model/--distill-pretrained): teacher = weights of a frozen teacher
    # (as init_from), teacher_model = its model name when the weights cannot say; the loss adds
    # weight * open_clip's DistillClipLoss term (clip_jax/train/distill.py). Needs loss softmax, accum_steps 1.
    c.distill = ml_collections.ConfigDict({"teacher": "", "teacher_model": "", "weight": 1.0})
    c.init_from_ema = False  # init_from a training run (trained with ema_decay): start from its EMA params
    # The text tower's tokenizer: "" is the model's own (CLIP's BPE for clip towers; a SigLIP tower's
    # spiece.model from init_from's directory), else a sentencepiece .model file or a directory holding it.
    c.tokenizer = ""

    c.checkpoint_every = 500  # steps between checkpoints (and one at the end)
    c.keep_checkpoints = 3  # newest checkpoints kept on disk
    c.log_every = 10  # steps between metrics lines (metrics.jsonl, TensorBoard / wandb)
    c.prefetch = 2  # batches of a tf.data input read and placed on the devices ahead, in a thread (0: off)
    c.eval_every = 0  # 0: only at the end (if evaluations are configured)
    c.strict_resume = False  # refuse to resume with an lr, schedule, data... other than config.json's
    # Where metrics go besides WORKDIR/metrics.jsonl, as open_clip's --report-to: "tensorboard"
    # (WORKDIR/tensorboard), "wandb" (Weights & Biases: pip install wandb; WANDB_MODE=offline works).
    c.report_to = ("tensorboard",)
    c.wandb_project = "clip_jax"  # the wandb project of report_to="wandb"; the run is named after WORKDIR

    # The training data. "random" is the benchmark source: noise batches made on the device (nothing is
    # learned; distinct_batches: 0 for an endless stream, n to cycle through n batches). Real data:
    # source synthetic | tfds | tfrecord | webdataset | folder with the fields of
    # clip_jax/data/image_text.py DATA_CONFIG_DEFAULTS (configs/default.py starts from those).
    c.data = ml_collections.ConfigDict({"source": "random", "distinct_batches": 0})
    # Evaluations run every eval_every steps and at the end, by name: {"type": zeroshot | robustness |
    # linear_probe | retrieval, and that type's fields} (clip_jax/eval/common.py), e.g.
    # c.evals.shape = {"type": "zeroshot", "dataset": "clip_synthetic", "task": "shape"}.
    c.evals = ml_collections.ConfigDict()
    return c


def field_docs() -> dict[str, str]:
    """Each field of default_config() (sections' fields as "mesh.data") -> its meaning, read from the
    comments beside and above its line in default_config's source: the schema documents itself, so
    `--help_config` cannot drift from it. A field's own trailing comment wins over the block above."""
    source = textwrap.dedent(inspect.getsource(default_config))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, on a line of its own)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            own_line = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), own_line)
    docs, block = {}, []
    for number, line in enumerate(source.splitlines(), start=1):
        text, own_line = comments.get(number, ("", False))
        if own_line:
            block.append(text)
            continue
        field = re.match(r"\s*c\.(\w+)\s*=", line)
        if field:
            docs[field.group(1)] = text or " ".join(block)
        if not line.strip() or field:
            block = []
    config = default_config()
    out = {}
    # In the schema's order; a field without a comment gets "" (a test refuses that).
    for name in [*[n for n in docs if n in config], *[n for n in config if n not in docs]]:
        value = config[name]
        if isinstance(value, ml_collections.ConfigDict) and value:
            out.update({f"{name}.{k}": docs.get(name, "") for k in value.keys()})
        else:
            out[name] = docs.get(name, "")
    return out


def describe_fields() -> str:
    """Every config field with its default and meaning, one line each (`--help_config`)."""
    defaults = _flat(default_config())
    lines = ["config fields (set with --config.FIELD=VALUE or --set FIELD=VALUE), default, meaning:"]
    for name, doc in field_docs().items():
        lines.append(f"  {name} = {defaults[name]!r}: {doc}")
    lines.append(
        "  data.* of the real sources (synthetic, tfds, tfrecord, webdataset, folder): every field and its "
        "default is in clip_jax/data/image_text.py DATA_CONFIG_DEFAULTS"
    )
    return "\n".join(lines)


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
    return out


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
    _check_data(config.data)
    unknown = [r for r in config.report_to if r not in REPORT_TO]
    if isinstance(config.report_to, str) or unknown:
        raise ValueError(f"config.report_to={config.report_to!r}: a tuple of {REPORT_TO} (or () for neither)")
    from clip_jax.eval.common import check_evals_config

    check_evals_config(config.evals)
    try:
        model_cfg = resolve_model_config(config.model)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config.model: {e}") from e
    if config.loss == "sigmoid" and model_cfg.init_logit_bias is None:
        raise ValueError("config.loss='sigmoid' needs a model with init_logit_bias (e.g. -10)")
    # A text tower learns from, and is evaluated on, its own vocabulary's ids: where they come from
    # (noise batches without evaluations read no text).
    if config.data.get("source") != "random" or config.evals or config.tokenizer:
        from clip_jax.inputs import tokenizer_source

        tokenizer_source(model_cfg, config.tokenizer, config.init_from)
    return model_cfg


def check_batch_fits_devices(config: ml_collections.ConfigDict, batch_devices: int) -> None:
    """ValueError naming config.batch_size unless every micro-batch splits evenly over the devices the
    batch is sharded on (mesh data x fsdp): JAX would otherwise fail only at the first batch."""
    unit = batch_devices * config.accum_steps
    if config.batch_size % unit:
        per = f"{config.accum_steps} micro-batches (config.accum_steps) x " if config.accum_steps > 1 else ""
        raise ValueError(
            f"config.batch_size={config.batch_size} does not split over {per}{batch_devices} batch devices "
            f"(mesh data x fsdp); use a multiple of {unit}"
        )


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
            f"must be in [0, config.total_steps] (total_steps={config.total_steps}): for a short run set "
            f"--config.warmup_steps={config.total_steps // 10} (a tenth of it), or a config file's steps= argument",
        ),
        ("end_lr_ratio", 0 <= config.end_lr_ratio <= 1, "must be in [0, 1]"),
        ("grad_clip_norm", config.grad_clip_norm >= 0, "must be >= 0 (0 disables clipping)"),
        ("ema_decay", 0 <= config.ema_decay < 1, "must be in [0, 1) (0: no EMA; e.g. 0.999)"),
        ("keep_checkpoints", config.keep_checkpoints >= 1, "must be >= 1"),
        ("prefetch", config.prefetch >= 0, "must be >= 0 (0: no prefetch thread)"),
    ]
    for field, ok, rule in checks:
        if not ok:
            raise ValueError(f"config.{field}={config[field]!r} {rule}")
    if config.init_from and "://" not in config.init_from and not os.path.exists(config.init_from):
        raise ValueError(
            f"config.init_from={config.init_from!r} does not exist: give a training workdir, a converted "
            "params directory or a weights file"
        )
    if config.branch_from:
        from clip_jax.train.branch import check_branch_config

        if config.init_from:
            raise ValueError(
                "config.init_from and config.branch_from are both set; a branch takes the parent's params"
            )
        check_branch_config(config)
    if config.init_from_only and not config.init_from:
        raise ValueError("config.init_from_only is set but config.init_from is empty")
    if config.init_from_ema and not config.init_from:
        raise ValueError("config.init_from_ema is set but config.init_from is empty: name the training run")
    check_schedule_config(config)
    check_distill_config(config)
    for field in ("no_decay", "freeze", "init_from_only"):
        for regex in config[field]:
            try:
                re.compile(regex)
            except (re.error, TypeError) as e:
                raise ValueError(f"config.{field} has an invalid regex {regex!r}: {e}") from e


def _check_data(data: ml_collections.ConfigDict) -> None:
    """config.data names a source, and a real source's fields are those of clip_jax.data (checked
    here so that a run without data fails before its workdir is made)."""
    source = data.get("source", "")
    if source == RANDOM_SOURCE:
        return
    from clip_jax.data.image_text import SOURCES, data_config

    if source not in SOURCES:
        raise ValueError(
            f"config.data.source={source!r}: set it to the training data's source, one of {SOURCES} "
            f"(e.g. --config.data.source=webdataset --config.data.path='DIR/{{00000..00099}}.tar'), "
            f"or {RANDOM_SOURCE!r} for noise batches that measure speed and learn nothing"
        )
    try:
        data_config(data)
    except ValueError as e:
        raise ValueError(f"config.data: {e}") from e


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
