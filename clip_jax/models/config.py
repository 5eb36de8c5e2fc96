"""Model hyperparameters and the named open_clip configurations.

The field names follow open_clip's `model_configs/*.json` so that a config can be read from one of
those files (`CLIPConfig.from_open_clip`) and so that a reader can compare them side by side.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

# A ModifiedResNet's feature map is 1/32 of the image (stride-2 stem conv, stem pool, 3 strided stages).
RESNET_STRIDE = 32


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A ViT image tower, or with `layers` a tuple of 4 block counts (as open_clip's vision_cfg has it) an
    OpenAI ModifiedResNet: `width` is then its stem width and `patch_size` is unused (None).

    The defaults are OpenAI's ViT. SigLIP's differs in five switches (open_clip's names where it has them):
    `pool_type` "map" pools by multihead attention of a learned probe (after ln_post on every token)
    instead of taking the class token ("tok"); `class_token` False drops the class token; `patch_bias`
    gives the patch embedding a bias; `no_ln_pre` drops ln_pre; `proj` False drops the projection, so the
    pooled width is the embedding (embed_dim must equal width). `gelu_approximate`, when set, overrides the
    model's GELU form for this tower only (see `CLIPConfig.gelu_approximate`).
    """

    image_size: int = 224
    patch_size: int | None = 32
    width: int = 768
    layers: int | tuple[int, ...] = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    pool_type: str = "tok"
    class_token: bool = True
    patch_bias: bool = False
    no_ln_pre: bool = False
    proj: bool = True
    gelu_approximate: bool | None = None

    def __post_init__(self) -> None:
        # JSON and open_clip give lists; a tuple keeps the config hashable (it keys cached shapes).
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.pool_type not in VISION_POOL_TYPES:
            raise ValueError(f"vision pool_type {self.pool_type!r}: choose from {VISION_POOL_TYPES}")
        if self.pool_type == "tok" and not self.class_token:
            raise ValueError('vision pool_type "tok" pools the class token: it needs class_token=True')
        if self.resnet:
            if len(self.layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in self.layers):
                raise ValueError(f"a ResNet tower has 4 stages of >= 1 blocks, got layers={self.layers}")
            vit_only = {
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name in _VIT_ONLY and getattr(self, f.name) != f.default
            }
            if vit_only:
                raise ValueError(f"{vit_only} describe a ViT tower; a ResNet (layers a tuple) has none")
            # Unused by a ResNet: one value, so that equal towers compare (and hash) equal.
            object.__setattr__(self, "patch_size", None)
        elif self.patch_size is None:
            raise ValueError("a ViT tower needs a patch_size (only a ResNet, layers a tuple, has none)")

    @property
    def resnet(self) -> bool:
        """True for a ModifiedResNet tower (layers per stage), False for a ViT."""
        return isinstance(self.layers, tuple)

    @property
    def feature_width(self) -> int:
        """Width of the tokens the tower attends over: the ViT's width, the ResNet's last stage (32x stem)."""
        return self.width * 32 if self.resnet else self.width

    @property
    def heads(self) -> int:
        return self.feature_width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // (RESNET_STRIDE if self.resnet else self.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches in the sequence (and rows before the grid in positional_embedding)."""
        return 1 if self.class_token else 0

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


VISION_POOL_TYPES = ("tok", "map")
# VisionConfig fields that only a ViT reads.
_VIT_ONLY = ("pool_type", "class_token", "patch_bias", "no_ln_pre", "proj", "gelu_approximate")
TEXT_POOL_TYPES = ("argmax", "last")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text transformer. The defaults are OpenAI's: causal, pooled at the end-of-text token (the
    largest id, hence "argmax"), projected without bias. SigLIP's (open_clip's names): `no_causal_mask`,
    `pool_type` "last" (the last position: SigLIP pads every caption to the full context) and `proj_bias`.
    `gelu_approximate`, when set, overrides the model's GELU form for this tower only.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    no_causal_mask: bool = False
    pool_type: str = "argmax"
    proj_bias: bool = False
    gelu_approximate: bool | None = None

    def __post_init__(self) -> None:
        if self.pool_type not in TEXT_POOL_TYPES:
            raise ValueError(f"text pool_type {self.pool_type!r}: choose from {TEXT_POOL_TYPES}")

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def padding_inert(self) -> bool:
        """True when the columns after every row's end-of-text token cannot change the features (causal
        mask, pooled at the EOT), so that evaluators may cut them off; SigLIP's tower reads them all."""
        return not self.no_causal_mask and self.pool_type == "argmax"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    # OpenAI's weights were trained with QuickGELU, open_clip's own with exact (erf) GELU, SigLIP's with
    # the tanh approximation of GELU (HF's "gelu_pytorch_tanh"): `gelu_approximate`, exclusive with
    # quick_gelu. A tower's own `gelu_approximate` (None: this one) overrides it for that tower: open_clip
    # builds some SigLIP models with timm's exact-GELU image trunk beside a tanh-GELU text tower
    # (`open_clip_gelu`), which differ from big_vision's tanh GELU by ~3e-4 relative on random weights.
    quick_gelu: bool = False
    gelu_approximate: bool = False
    # LayerNorm epsilon of every LayerNorm in both towers: torch's 1e-5 (OpenAI, open_clip), SigLIP's 1e-6.
    norm_eps: float = 1e-5
    # SigLIP-style models carry a learned logit bias; CLIP models do not.
    init_logit_bias: float | None = None
    # Initial log temperature: CLIP's log(1/0.07), SigLIP's log(10). Loaded weights carry their own.
    init_logit_scale: float = math.log(1 / 0.07)  # _DEFAULT_LOGIT_SCALE

    def __post_init__(self) -> None:
        if self.quick_gelu and (
            self.gelu_approximate or self.vision.gelu_approximate or self.text.gelu_approximate
        ):
            raise ValueError("quick_gelu and gelu_approximate are exclusive: pick one activation")
        if not self.vision.resnet and not self.vision.proj and self.embed_dim != self.vision.width:
            raise ValueError(
                f"an image tower without projection (vision.proj=False) gives its width "
                f"{self.vision.width} as the embedding, but embed_dim is {self.embed_dim}"
            )

    @property
    def vision_gelu_approximate(self) -> bool:
        """The image tower's GELU form: tanh (True) or exact erf (False)."""
        own = None if self.vision.resnet else self.vision.gelu_approximate
        return self.gelu_approximate if own is None else own

    @property
    def text_gelu_approximate(self) -> bool:
        """The text tower's GELU form: tanh (True) or exact erf (False)."""
        return self.gelu_approximate if self.text.gelu_approximate is None else self.text.gelu_approximate

    @property
    def family(self) -> str:
        """ "siglip" for SigLIP's text tower (pooled at the last position: it reads sentencepiece ids padded
        to the context, which only a SigLIP checkpoint's vocabulary gives), else "clip". It decides the
        inputs a model needs where its checkpoint does not say (`clip_jax.inputs.model_inputs`)."""
        return "siglip" if self.text.pool_type == "last" else "clip"

    def replace(self, **kwargs: Any) -> CLIPConfig:
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """Build from a (possibly partial) nested dict; unknown keys are an error naming the key."""
        d = dict(d)
        _check_keys(cls, d, "model")
        vision = d.pop("vision", {}) or {}
        text = d.pop("text", {}) or {}
        if not isinstance(vision, VisionConfig):
            _check_keys(VisionConfig, vision, "model.vision")
            vision = VisionConfig(**vision)
        if not isinstance(text, TextConfig):
            _check_keys(TextConfig, text, "model.text")
            text = TextConfig(**text)
        return cls(vision=vision, text=text, **d)

    @classmethod
    def from_open_clip(cls, cfg: Mapping[str, Any], gelu: str = "trained") -> CLIPConfig:
        """Translate an open_clip `model_configs/*.json` dict (vision_cfg / text_cfg keys).

        Options that change the model's function away from the plain CLIP towers (Hugging Face towers,
        timm towers other than SigLIP's, CoCa's decoder, other pooling, layer scale, ...) raise a
        ValueError naming them, so a checkpoint is never loaded into a model that computes something else.
        A SigLIP config (timm's `vit_*_siglip_*` trunk) computes the tanh GELU its weights were trained
        with, or with `gelu="open_clip"` each tower's GELU as open_clip's model computes it.
        """
        if gelu not in ("trained", "open_clip"):
            raise ValueError(f'gelu={gelu!r}: choose "trained" or "open_clip"')
        if (cfg.get("vision_cfg") or {}).get("timm_model_name") is not None:
            return _siglip_from_open_clip(cfg, gelu)
        _check_open_clip_options(cfg, _OPEN_CLIP_TOP, "open_clip config")
        v, t = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
        _check_open_clip_options(v, _OPEN_CLIP_VISION, "open_clip vision_cfg")
        _check_open_clip_options(t, _OPEN_CLIP_TEXT, "open_clip text_cfg")
        layers = v.get("layers", 12)
        resnet = isinstance(layers, (list, tuple))  # open_clip builds a ModifiedResNet for these
        vision = VisionConfig(
            image_size=_as_int(v.get("image_size", 224)),
            patch_size=None if resnet else _as_int(v.get("patch_size", 16)),
            width=v.get("width", 768),
            layers=tuple(layers) if resnet else layers,
            head_width=v.get("head_width", 64),
            mlp_ratio=v.get("mlp_ratio", 4.0),
        )
        text = TextConfig(
            context_length=t.get("context_length", 77),
            vocab_size=t.get("vocab_size", 49408),
            width=t.get("width", 512),
            heads=t.get("heads", 8),
            layers=t.get("layers", 12),
            mlp_ratio=t.get("mlp_ratio", 4.0),
        )
        return cls(
            embed_dim=cfg["embed_dim"],
            vision=vision,
            text=text,
            quick_gelu=bool(cfg.get("quick_gelu", False)),
            init_logit_bias=cfg.get("init_logit_bias"),
        )

    def to_open_clip(self) -> dict[str, Any]:
        """The open_clip `model_configs/*.json` dict of this config (`from_open_clip`'s inverse), which
        `open_clip.CLIP(**cfg)` builds and open_clip's factory reads from `open_clip_config.json`.

        A SigLIP-style config (any of the options the plain CLIP towers lack) raises a ValueError naming
        them: open_clip builds SigLIP's image tower from timm, which has other parameter names.
        """
        v, t = self.vision, self.text
        unsupported = _non_default(self, ("gelu_approximate", "norm_eps"), "")
        if not v.resnet:
            unsupported += _non_default(v, _VIT_ONLY, "vision.")
        unsupported += _non_default(
            t, ("no_causal_mask", "pool_type", "proj_bias", "gelu_approximate"), "text."
        )
        if unsupported:
            raise ValueError(f"open_clip's CLIP towers cannot express {unsupported}")
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": {
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "width": v.width,
                # A list, as open_clip's json files have it (open_clip builds a ResNet for a list).
                "layers": list(v.layers) if v.resnet else v.layers,
                "head_width": v.head_width,
                "mlp_ratio": v.mlp_ratio,
            },
            "text_cfg": {
                "context_length": t.context_length,
                "vocab_size": t.vocab_size,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
                "mlp_ratio": t.mlp_ratio,
            },
        }
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        if self.init_logit_scale != _DEFAULT_LOGIT_SCALE:
            out["init_logit_scale"] = self.init_logit_scale
        return out


_DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


def _non_default(cfg: Any, names: tuple[str, ...], prefix: str) -> list[str]:
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return [f"{prefix}{n}={getattr(cfg, n)!r}" for n in names if getattr(cfg, n) != defaults[n]]


# open_clip config keys clip_jax reads: _ANY when translated (or inert, such as output_tokens), else the
# tuple of values (open_clip's defaults) that describe the plain CLIP tower clip_jax builds.
_ANY = None
_OPEN_CLIP_TOP = {
    "embed_dim": _ANY,
    "vision_cfg": _ANY,
    "text_cfg": _ANY,
    "quick_gelu": _ANY,
    "init_logit_bias": _ANY,
    "init_logit_scale": _ANY,  # the initial value only; loaded weights carry their own
    "custom_text": _ANY,  # the same text tower under `text.`; the weights reader strips the prefix
    "cast_dtype": _ANY,
    "multimodal_cfg": (None,),  # CoCa's text decoder
}
# Options of open_clip's transformer blocks and pooling that both towers share.
_OPEN_CLIP_TOWER = {
    "output_tokens": _ANY,
    "ls_init_value": (None,),
    "final_ln_after_pool": (False,),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
    "block_type": (None, "default"),
    **dict.fromkeys(
        ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"),
        (False,),
    ),
}
_OPEN_CLIP_VISION = {
    **_OPEN_CLIP_TOWER,
    **dict.fromkeys(("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"), _ANY),
    "patch_dropout": _ANY,  # training-time only; open_clip disables it in eval mode
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "pool_type": ("tok",),
    "timm_model_name": (None,),
    # Inert unless their switch above is set (attentional_pool, timm_model_name).
    **dict.fromkeys(("attn_pooler_queries", "attn_pooler_heads"), _ANY),
    **dict.fromkeys(("timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop"), _ANY),
    "timm_drop_path": _ANY,
}
_OPEN_CLIP_TEXT = {
    **_OPEN_CLIP_TOWER,
    **dict.fromkeys(("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"), _ANY),
    "pad_id": _ANY,  # only read with embed_cls
    "eos_id": _ANY,  # only read with pool_type "eos"
    "hf_tokenizer_name": (None,),  # clip_jax tokenizes with CLIP's BPE only
    "tokenizer_mode": (None,),
    "tokenizer_kwargs": (None, {}),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
    "hf_model_name": (None,),
    **dict.fromkeys(("hf_model_pretrained", "hf_proj_type", "hf_pooler_type"), _ANY),  # inert without it
}


# open_clip's SigLIP configs: what they set (or may) beside the sizes, and the values clip_jax builds.
_OPEN_CLIP_SIGLIP_TOP = {**_OPEN_CLIP_TOP, "custom_text": (True,)}
_OPEN_CLIP_SIGLIP_VISION = {
    "image_size": _ANY,
    "timm_model_name": _ANY,  # checked against the trunks clip_jax knows
    "timm_model_pretrained": _ANY,  # whether timm downloads weights: not the model's function
    "timm_pool": ("map",),
    "timm_proj": ("none",),
    "timm_drop": _ANY,  # training only
    "timm_drop_path": _ANY,
    "patch_dropout": _ANY,
}
_OPEN_CLIP_SIGLIP_TEXT = {
    **_OPEN_CLIP_TEXT,
    "hf_tokenizer_name": _ANY,  # the tokenizer: clip_jax.inputs finds it beside the weights
    "tokenizer_kwargs": _ANY,
    "no_causal_mask": (True,),
    "pool_type": ("last",),
    "proj_bias": (True,),
    "norm_kwargs": ({"eps": 1e-6},),
    "act_kwargs": (None, {}, {"approximate": "tanh"}),
}
_TIMM_SIGLIP = re.compile(r"vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(\d+)")


def _siglip_from_open_clip(cfg: Mapping[str, Any], gelu: str) -> CLIPConfig:
    """CLIPConfig of an open_clip SigLIP config: timm's SigLIP trunk and open_clip's SigLIP text tower."""
    _check_open_clip_options(cfg, _OPEN_CLIP_SIGLIP_TOP, "open_clip config")
    v, t = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    _check_open_clip_options(v, _OPEN_CLIP_SIGLIP_VISION, "open_clip vision_cfg")
    _check_open_clip_options(t, _OPEN_CLIP_SIGLIP_TEXT, "open_clip text_cfg")
    trunk = v["timm_model_name"]
    m = _TIMM_SIGLIP.fullmatch(trunk)
    if m is None:
        raise ValueError(
            f"open_clip vision_cfg: timm_model_name {trunk!r} is not a timm SigLIP trunk clip_jax builds "
            f"(vit_{{{','.join(SIGLIP_TOWERS)}}}_patch<P>_siglip_<S>)"
        )
    width, layers, heads, ratio = SIGLIP_TOWERS[m.group(1)]
    image_size = _as_int(v.get("image_size", int(m.group(3))))
    t_width = t.get("width", 512)
    if cfg["embed_dim"] != width:
        raise ValueError(f"open_clip config: embed_dim {cfg['embed_dim']} is not the trunk's width {width}")
    named = CLIPConfig(
        embed_dim=width,
        vision=VisionConfig(
            image_size, int(m.group(2)), width, layers, width // heads, ratio, **_SIGLIP_VISION
        ),
        text=TextConfig(
            t.get("context_length", 77),
            t.get("vocab_size", 49408),
            t_width,
            t.get("heads", 8),
            t.get("layers", 12),
            t.get("mlp_ratio", 4.0),
            **_SIGLIP_TEXT,
        ),
        **{**_SIGLIP, "init_logit_bias": cfg.get("init_logit_bias", -10.0)},
    )
    if gelu == "trained":
        return named
    text_tanh = (t.get("act_kwargs") or {}).get("approximate") == "tanh"
    return with_gelu(named, vision=trunk in TIMM_TANH_GELU_TRUNKS, text=text_tanh)


def _check_open_clip_options(d: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; clip_jax reads {sorted(allowed)}")
    unsupported = {k: d[k] for k, ok in allowed.items() if k in d and ok is not _ANY and d[k] not in ok}
    if unsupported:
        raise ValueError(
            f"{where}: {unsupported} not supported by clip_jax, which builds the plain CLIP ViT and text "
            "transformer (supported values: "
            + ", ".join(f"{k} in {list(allowed[k])}" for k in unsupported)
            + ")"
        )


def _as_int(x: Any) -> int:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise ValueError(f"non-square sizes are not supported: {x}")
        return int(x[0])
    return int(x)


def _check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; known fields: {sorted(known)}")


_TEXT_S_ALT = TextConfig(width=256, heads=4, layers=10)
_TEXT_S = TextConfig(width=384, heads=6, layers=12)
_TEXT_B = TextConfig(width=512, heads=8, layers=12)
_TEXT_PLUS = TextConfig(width=640, heads=10, layers=12)
_TEXT_L = TextConfig(width=768, heads=12, layers=12)
_TEXT_H = TextConfig(width=1024, heads=16, layers=24)
_TEXT_BIGG = TextConfig(width=1280, heads=20, layers=32)
_TEXT_E = TextConfig(width=1280, heads=20, layers=36)
_TEXT_RN50X64 = TextConfig(width=1024, heads=16, layers=12)
# The ViT-H/-g/-bigG/-e image towers have heads wider than OpenAI's 64, which their weights do not show:
# `clip_jax.weights.infer_config` takes heads from this table (matched by shapes), never from a guess.
_V_H = dict(width=1280, layers=32, head_width=80)

# Exact hyperparameters of open_clip's model_configs/<name>.json, for every one of them that clip_jax can
# build (tests/test_weights.py checks both directions: each translates to this entry, none is missing).
_BASE_CONFIGS: dict[str, CLIPConfig] = {
    "ViT-S-32": CLIPConfig(384, VisionConfig(224, 32, 384, 12), _TEXT_S),
    "ViT-S-32-alt": CLIPConfig(256, VisionConfig(224, 32, 384, 12), _TEXT_S_ALT),
    "ViT-S-16": CLIPConfig(384, VisionConfig(224, 16, 384, 12), _TEXT_S),
    "ViT-S-16-alt": CLIPConfig(256, VisionConfig(224, 16, 384, 12), _TEXT_S_ALT),
    "ViT-M-32": CLIPConfig(512, VisionConfig(224, 32, 512, 12), _TEXT_B),
    "ViT-M-32-alt": CLIPConfig(384, VisionConfig(224, 32, 512, 12), _TEXT_S),
    "ViT-M-16": CLIPConfig(512, VisionConfig(224, 16, 512, 12), _TEXT_B),
    "ViT-B-32": CLIPConfig(512, VisionConfig(224, 32, 768, 12), _TEXT_B),
    "ViT-B-32-256": CLIPConfig(512, VisionConfig(256, 32, 768, 12), _TEXT_B),
    "ViT-B-32-plus-256": CLIPConfig(640, VisionConfig(256, 32, 896, 12), _TEXT_PLUS),
    "ViT-B-16": CLIPConfig(512, VisionConfig(224, 16, 768, 12), _TEXT_B),
    "ViT-B-16-plus": CLIPConfig(640, VisionConfig(224, 16, 896, 12), _TEXT_PLUS),
    "ViT-B-16-plus-240": CLIPConfig(640, VisionConfig(240, 16, 896, 12), _TEXT_PLUS),
    "ViT-L-14": CLIPConfig(768, VisionConfig(224, 14, 1024, 24), _TEXT_L),
    "ViT-L-14-280": CLIPConfig(768, VisionConfig(280, 14, 1024, 24), _TEXT_L),
    "ViT-L-14-336": CLIPConfig(768, VisionConfig(336, 14, 1024, 24), _TEXT_L),
    "ViT-L-16": CLIPConfig(768, VisionConfig(224, 16, 1024, 24), _TEXT_L),
    "ViT-L-16-320": CLIPConfig(768, VisionConfig(320, 16, 1024, 24), _TEXT_L),
    "ViT-H-14": CLIPConfig(1024, VisionConfig(224, 14, **_V_H), _TEXT_H),
    "ViT-H-14-378": CLIPConfig(1024, VisionConfig(378, 14, **_V_H), _TEXT_H),
    "ViT-H-16": CLIPConfig(1024, VisionConfig(224, 16, **_V_H), _TEXT_H),
    "ViT-g-14": CLIPConfig(1024, VisionConfig(224, 14, 1408, 40, head_width=88, mlp_ratio=4.3637), _TEXT_H),
    "ViT-bigG-14": CLIPConfig(
        1280, VisionConfig(224, 14, 1664, 48, head_width=104, mlp_ratio=4.9231), _TEXT_BIGG
    ),
    "ViT-e-14": CLIPConfig(1280, VisionConfig(224, 14, 1792, 56, head_width=112, mlp_ratio=8.5715), _TEXT_E),
    # OpenAI's ModifiedResNets (their released weights use QuickGELU in the text tower: the -quickgelu names).
    "RN50": CLIPConfig(1024, VisionConfig(224, None, 64, (3, 4, 6, 3)), _TEXT_B),
    "RN101": CLIPConfig(512, VisionConfig(224, None, 64, (3, 4, 23, 3)), _TEXT_B),
    "RN50x4": CLIPConfig(640, VisionConfig(288, None, 80, (4, 6, 10, 6)), _TEXT_PLUS),
    "RN50x16": CLIPConfig(768, VisionConfig(384, None, 96, (6, 8, 18, 8)), _TEXT_L),
    "RN50x64": CLIPConfig(1024, VisionConfig(448, None, 128, (3, 15, 36, 10)), _TEXT_RN50X64),
    # Small models for tests and the synthetic-data main job; not open_clip configs.
    "tiny": CLIPConfig(
        64,
        VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
    # A ModifiedResNet with one identity block (stage 2); 64 px images give the attention pool a 2x2 map.
    "tiny-rn": CLIPConfig(
        64,
        VisionConfig(image_size=64, patch_size=None, width=16, layers=(1, 2, 1, 1)),
        TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
}

# SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025), as big_vision trained them and HF's
# google/siglip-* / google/siglip2-* (fixed resolution) have them: MAP-pooled ViT without class token,
# ln_pre or projection; non-causal text tower pooled at the last of its positions, with a biased head;
# tanh GELU, LayerNorm eps 1e-6, and the sigmoid loss's logit scale log(10) and bias -10. SigLIP 2 differs
# in its Gemma vocabulary (256000 pieces) only.
_SIGLIP_VISION = dict(pool_type="map", class_token=False, patch_bias=True, no_ln_pre=True, proj=False)
_SIGLIP_TEXT = dict(no_causal_mask=True, pool_type="last", proj_bias=True)
_SIGLIP = dict(gelu_approximate=True, norm_eps=1e-6, init_logit_bias=-10.0, init_logit_scale=math.log(10))
# Tower sizes: (width, layers, heads, mlp_ratio), under timm's names (open_clip builds the image tower
# from timm: vit_{size}_patch{P}_siglip_{S}).
SIGLIP_TOWERS = {
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "so400m": (1152, 27, 16, 3.7362),
    "giantopt": (1536, 40, 16, 4.0),
}
# timm's SigLIP trunks built with act_layer="gelu_tanh"; the others compute the exact erf GELU.
TIMM_TANH_GELU_TRUNKS = frozenset(
    {
        "vit_base_patch32_siglip_256",
        "vit_large_patch16_siglip_512",
        "vit_so400m_patch16_siglip_256",
        "vit_so400m_patch16_siglip_384",
        "vit_so400m_patch16_siglip_512",
        "vit_giantopt_patch16_siglip_256",
        "vit_giantopt_patch16_siglip_384",
    }
)
_SIGLIP_VOCAB, _SIGLIP_I18N_VOCAB, _SIGLIP2_VOCAB = 32000, 250000, 256000


def _siglip_config(
    vision: str, patch: int, image_size: int, text: str, vocab: int, context: int = 64
) -> CLIPConfig:
    v_width, v_layers, v_heads, v_ratio = SIGLIP_TOWERS[vision]
    t_width, t_layers, t_heads, t_ratio = SIGLIP_TOWERS[text]
    return CLIPConfig(
        v_width,
        VisionConfig(image_size, patch, v_width, v_layers, v_width // v_heads, v_ratio, **_SIGLIP_VISION),
        TextConfig(context, vocab, t_width, t_heads, t_layers, t_ratio, **_SIGLIP_TEXT),
        **_SIGLIP,
    )


# open_clip's names (model_configs/*SigLIP*.json): (image tower, patch, image size, text tower, vocab,
# context). Left out: ViT-SO400M-14-SigLIP-378 (the shapes, hence the weights, of -384: 378 and 384 px
# both give a 27x27 grid of 14 px patches) and ViT-SO400M-16-SigLIP-i18n-256 (a text tower without head).
_SIGLIP_NAMED = {
    "ViT-B-16-SigLIP": ("base", 16, 224, "base", _SIGLIP_VOCAB),
    "ViT-B-16-SigLIP-256": ("base", 16, 256, "base", _SIGLIP_VOCAB),
    "ViT-B-16-SigLIP-384": ("base", 16, 384, "base", _SIGLIP_VOCAB),
    "ViT-B-16-SigLIP-512": ("base", 16, 512, "base", _SIGLIP_VOCAB),
    "ViT-B-16-SigLIP-i18n-256": ("base", 16, 256, "base", _SIGLIP_I18N_VOCAB),
    "ViT-L-16-SigLIP-256": ("large", 16, 256, "large", _SIGLIP_VOCAB),
    "ViT-L-16-SigLIP-384": ("large", 16, 384, "large", _SIGLIP_VOCAB),
    "ViT-SO400M-14-SigLIP": ("so400m", 14, 224, "so400m", _SIGLIP_VOCAB, 16),
    "ViT-SO400M-14-SigLIP-384": ("so400m", 14, 384, "so400m", _SIGLIP_VOCAB),
    "ViT-B-16-SigLIP2": ("base", 16, 224, "base", _SIGLIP2_VOCAB),
    "ViT-B-16-SigLIP2-256": ("base", 16, 256, "base", _SIGLIP2_VOCAB),
    "ViT-B-16-SigLIP2-384": ("base", 16, 384, "base", _SIGLIP2_VOCAB),
    "ViT-B-16-SigLIP2-512": ("base", 16, 512, "base", _SIGLIP2_VOCAB),
    "ViT-B-32-SigLIP2-256": ("base", 32, 256, "base", _SIGLIP2_VOCAB),
    "ViT-L-16-SigLIP2-256": ("large", 16, 256, "large", _SIGLIP2_VOCAB),
    "ViT-L-16-SigLIP2-384": ("large", 16, 384, "large", _SIGLIP2_VOCAB),
    "ViT-L-16-SigLIP2-512": ("large", 16, 512, "large", _SIGLIP2_VOCAB),
    "ViT-SO400M-14-SigLIP2": ("so400m", 14, 224, "so400m", _SIGLIP2_VOCAB),
    "ViT-SO400M-14-SigLIP2-378": ("so400m", 14, 378, "so400m", _SIGLIP2_VOCAB),
    "ViT-SO400M-16-SigLIP2-256": ("so400m", 16, 256, "so400m", _SIGLIP2_VOCAB),
    "ViT-SO400M-16-SigLIP2-384": ("so400m", 16, 384, "so400m", _SIGLIP2_VOCAB),
    "ViT-SO400M-16-SigLIP2-512": ("so400m", 16, 512, "so400m", _SIGLIP2_VOCAB),
    "ViT-gopt-16-SigLIP2-256": ("giantopt", 16, 256, "so400m", _SIGLIP2_VOCAB),
    "ViT-gopt-16-SigLIP2-384": ("giantopt", 16, 384, "so400m", _SIGLIP2_VOCAB),
}
_SIGLIP_CONFIGS: dict[str, CLIPConfig] = {name: _siglip_config(*spec) for name, spec in _SIGLIP_NAMED.items()}
# A small SigLIP for tests (a sentencepiece vocab of 1000 pieces).
_SIGLIP_CONFIGS["tiny-siglip"] = CLIPConfig(
    64,
    VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=16, **_SIGLIP_VISION),
    TextConfig(context_length=64, vocab_size=1000, width=64, heads=4, layers=2, **_SIGLIP_TEXT),
    **_SIGLIP,
)


def timm_siglip_trunk(name: str) -> str:
    """The timm model open_clip builds as the image tower of the named SigLIP config."""
    vision, patch, image_size = _SIGLIP_NAMED[name][:3]
    return f"vit_{vision}_patch{patch}_siglip_{image_size}"


def open_clip_gelu(name: str) -> CLIPConfig:
    """The named SigLIP config with each tower's GELU as open_clip's model computes it, for exact parity
    with `open_clip.create_model(name)`: timm's image trunk uses exact erf GELU except the trunks in
    TIMM_TANH_GELU_TRUNKS, open_clip's text tower tanh GELU for SigLIP 2 (act_kwargs) and exact GELU for
    SigLIP. The named config itself computes the tanh GELU big_vision trained every SigLIP with."""
    if name not in _SIGLIP_NAMED:
        raise ValueError(f"{name!r} is not one of open_clip's SigLIP models: {sorted(_SIGLIP_NAMED)}")
    return with_gelu(
        get_model_config(name),
        vision=timm_siglip_trunk(name) in TIMM_TANH_GELU_TRUNKS,
        text=_SIGLIP_NAMED[name][4] == _SIGLIP2_VOCAB,
    )


def with_gelu(cfg: CLIPConfig, vision: bool, text: bool) -> CLIPConfig:
    """`cfg` with the tanh (True) or exact (False) GELU in each tower, in canonical form: the text tower's
    on the model, the image tower's as its override only where it differs."""
    return cfg.replace(
        gelu_approximate=text,
        vision=dataclasses.replace(cfg.vision, gelu_approximate=None if vision == text else vision),
        text=dataclasses.replace(cfg.text, gelu_approximate=None),
    )


MODEL_CONFIGS: dict[str, CLIPConfig] = {}
for _name, _cfg in _BASE_CONFIGS.items():
    MODEL_CONFIGS[_name] = _cfg
    MODEL_CONFIGS[_name + "-quickgelu"] = _cfg.replace(quick_gelu=True)
# SigLIP was trained with its tanh GELU only: no -quickgelu variants.
MODEL_CONFIGS.update(_SIGLIP_CONFIGS)


def get_model_config(name: str) -> CLIPConfig:
    """Named config, e.g. 'ViT-B-32' or 'ViT-B-32-quickgelu', 'RN50-quickgelu' (the form of OpenAI's weights)."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODEL_CONFIGS)}") from None


def resolve_model_config(model: Any) -> CLIPConfig:
    """config.model: a name from clip_jax.models.MODEL_CONFIGS, or an inline dict in CLIPConfig's form."""
    if isinstance(model, str):
        return get_model_config(model)
    if isinstance(model, CLIPConfig):
        return model
    if hasattr(model, "to_dict"):  # an ml_collections ConfigDict
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


def config_name(cfg: CLIPConfig) -> str | None:
    """The name of the named config equal to `cfg`, else None (a custom model, e.g. an inline training config)."""
    return next((name for name, named in MODEL_CONFIGS.items() if named == cfg), None)


def describe(cfg: CLIPConfig) -> str:
    """The model's name if it is a named config, else a short description of its sizes (for messages)."""
    name = config_name(cfg)
    if name is not None:
        return name
    v, t = cfg.vision, cfg.text
    act = "quickgelu" if cfg.quick_gelu else "gelu"
    return (
        f"custom(vision {v.layers}x{v.width} p{v.patch_size}@{v.image_size}, "
        f"text {t.layers}x{t.width}, embed {cfg.embed_dim}, {act})"
    )


def config_diff(a: CLIPConfig, b: CLIPConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (value in a, value in b) for every field where the two configs differ."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
