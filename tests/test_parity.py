"""Parity of converted weights: random open_clip / HF CLIP models vs clip_jax on real photographs.

Each reference model is written to disk in a format users have (.safetensors, torch .bin, TorchScript,
a HF save_pretrained directory), converted through `load_pretrained`, and fed the same pixels and
tokens as the PyTorch model. Features and logits must agree to 1e-4 relative (fp32, CPU). Every reference
has random LayerNorm scales and biases, linear biases, class and positional embeddings and logit scale
(`randomize_torch_params`): at their inits (ones, zeros, a constant) a wrong mapping of them would pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
skimage_data = pytest.importorskip("skimage.data")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_weights import randomize_torch_params  # noqa: E402

from clip_jax import get_model_config, interpolate_pos_embed, load_pretrained  # noqa: E402
from clip_jax.preprocess import preprocess_image  # noqa: E402
from clip_jax.tokenizer import tokenize  # noqa: E402

TEXTS = [
    "a photo of an astronaut",
    "a cup of coffee on a saucer",
    "a cat",
    "",
    "Café ☕ — naïve façade, 12.5% OFF!!",
    " ".join(["a very long caption that is truncated"] * 20),
]
REL = 1e-4


def photos(size: int) -> np.ndarray:
    """Three real photographs (different aspect ratios), OpenAI eval preprocessing, [3, S, S, 3]."""
    return np.stack(
        [
            preprocess_image(f(), size)
            for f in (skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea)
        ]
    )


def assert_rel_close(actual, expected, rel: float = REL) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert err <= rel, f"max relative error {err:.3g} > {rel}"


def clip_jax_outputs(model, params, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    def fwd(p, x, t):
        img, txt, scale = model.apply({"params": p}, x, t)[:3]
        return img, txt, scale * img @ txt.T

    img, txt, logits = jax.jit(fwd)(params, jnp.asarray(images), jnp.asarray(tokens))
    return {"image": np.asarray(img), "text": np.asarray(txt), "logits": np.asarray(logits)}


@torch.no_grad()
def open_clip_outputs(model, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    img = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
    txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True)
    return {
        "image": img.numpy(),
        "text": txt.numpy(),
        "logits": (model.logit_scale.exp() * img @ txt.T).numpy(),
    }


def assert_parity(ours: dict, ref: dict) -> None:
    for k in ref:
        assert_rel_close(ours[k], ref[k])


# A small open_clip CLIP with a non-default patch and image size. It is no named config, so its heads
# cannot be inferred from its shapes: loading it needs its config (the open_clip_config.json beside it).
SMALL_OPEN_CLIP = dict(
    embed_dim=96,
    vision_cfg=dict(image_size=112, patch_size=14, width=128, layers=2, head_width=64, mlp_ratio=3.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
)
# The shapes of clip_jax's named 'tiny' config (32-wide heads), which shapes alone identify.
TINY_OPEN_CLIP = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)


def small_open_clip(quick_gelu: bool, seed: int, cfg: dict = SMALL_OPEN_CLIP) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_torch_params(open_clip.CLIP(**cfg, quick_gelu=quick_gelu), seed).eval()


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    """ViT-B-32-quickgelu (OpenAI's architecture), random init, saved as open_clip .safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = randomize_torch_params(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None), 0).eval()
    path = tmp_path_factory.mktemp("b32") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_vit_b32_quickgelu_safetensors(vit_b32):
    ref_model, path = vit_b32
    model, params = load_pretrained("ViT-B-32-quickgelu", path)
    images, tokens = photos(224), tokenize(TEXTS)
    assert_parity(
        clip_jax_outputs(model, params, images, tokens), open_clip_outputs(ref_model, images, tokens)
    )


def test_vit_b32_config_inferred_and_bin_identical(vit_b32, tmp_path):
    """Shapes alone give ViT-B-32; a DDP training checkpoint (.pt, `module.` keys) loads the same params."""
    ref_model, path = vit_b32
    model, params = load_pretrained(None, path, quick_gelu=True)
    assert model.cfg == get_model_config("ViT-B-32-quickgelu")
    ckpt = tmp_path / "epoch_1.pt"
    sd = {"module." + k: v for k, v in ref_model.state_dict().items()}
    torch.save({"epoch": 1, "name": "test", "state_dict": sd}, ckpt)
    _, params_pt = load_pretrained("ViT-B-32-quickgelu", ckpt)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, params_pt)
    assert all(jax.tree.leaves(same))


def test_small_gelu_model_bin_with_its_config(tmp_path):
    """Exact-GELU custom config (p14 @ 112, mlp_ratio 3) from a torch .bin and its open_clip_config.json."""
    ref = small_open_clip(quick_gelu=False, seed=1)
    path = tmp_path / "pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    # Without its config the heads are not guessed (128 wide: 2 heads of 64 here, but 4 of 32 would fit).
    with pytest.raises(ValueError, match="match no named model.*pass the model name"):
        load_pretrained(None, path, quick_gelu=False)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": SMALL_OPEN_CLIP}))
    model, params = load_pretrained(None, path, quick_gelu=False)
    assert (model.cfg.vision.patch_size, model.cfg.vision.image_size, model.cfg.quick_gelu) == (
        14,
        112,
        False,
    )
    images, tokens = photos(112), tokenize(TEXTS)
    expected = open_clip_outputs(ref, images, tokens)
    assert_parity(clip_jax_outputs(model, params, images, tokens), expected)
    # The activation matters: the same weights under QuickGELU give image features that fail the check.
    model_q, params_q = load_pretrained(None, path, quick_gelu=True)
    wrong = jax.jit(lambda p, x: model_q.apply({"params": p}, x, method=model_q.encode_image))(
        params_q, images
    )
    wrong = np.asarray(wrong) / np.linalg.norm(np.asarray(wrong), axis=-1, keepdims=True)
    assert np.max(np.abs(wrong - expected["image"])) / np.max(np.abs(expected["image"])) > 5 * REL


def test_each_randomised_leaf_is_checked(tmp_path):
    """Every LayerNorm, bias, embedding and logit-scale leaf shows in the compared outputs: put back at its
    init value (ones, zeros, log(1/0.07)), as a mapping that dropped it would leave it, parity fails."""
    from safetensors.torch import save_file

    ref = small_open_clip(quick_gelu=False, seed=4, cfg=TINY_OPEN_CLIP)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, params = load_pretrained("tiny", path)
    images, tokens = photos(32), tokenize(TEXTS)
    expected = open_clip_outputs(ref, images, tokens)

    @jax.jit
    def fwd(p):
        img, txt, scale = model.apply({"params": p}, jnp.asarray(images), jnp.asarray(tokens))[:3]
        return {"image": img, "text": txt, "logits": scale * img @ txt.T}

    def worst(p) -> float:
        out = fwd(p)
        return max(float(np.max(np.abs(out[k] - e)) / np.max(np.abs(e))) for k, e in expected.items())

    assert worst(params) <= REL
    init = {"scale": 1.0, "bias": 0.0, "class_embedding": 0.0, "positional_embedding": 0.0}
    init["logit_scale"] = float(np.log(1 / 0.07))
    checked = []
    for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = keypath[-1].key
        if name not in init:
            continue
        reset = jax.tree_util.tree_map_with_path(
            lambda kp, a, kp0=keypath, v=init[name]: jnp.full_like(a, v) if kp == kp0 else a, params
        )
        where = jax.tree_util.keystr(keypath)
        assert worst(reset) > 5 * REL, where
        checked.append(where)
    # 4 blocks of 8 (2 LayerNorms, q/k/v, out, 2 MLP biases), 3 final LayerNorms, 3 embeddings, the scale.
    assert len(checked) == 4 * 8 + 3 * 2 + 3 + 1


def test_openai_torchscript(tmp_path):
    """An OpenAI-style TorchScript archive (with its int entries) loads as QuickGELU without being told.

    Its shapes are those of the named 'tiny' config, so the config (heads included) is inferred too.
    """
    ref = small_open_clip(quick_gelu=True, seed=2, cfg=TINY_OPEN_CLIP)
    # OpenAI's archives carry these hyperparameters in their state dict (open_clip keeps them as ints).
    del ref.context_length, ref.vocab_size
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        ref.register_buffer(name, torch.tensor(value))
    images, tokens = photos(32), tokenize(TEXTS)
    x, t = torch.from_numpy(images[:1]).permute(0, 3, 1, 2), torch.from_numpy(tokens[:1]).long()
    traced = torch.jit.trace_module(
        ref, {"forward": (x, t), "encode_image": (x,), "encode_text": (t,)}, check_trace=False
    )
    torch.jit.save(traced, str(tmp_path / "ViT-custom.pt"))
    model, params = load_pretrained(None, tmp_path / "ViT-custom.pt")
    assert model.cfg == get_model_config("tiny-quickgelu")
    assert_parity(clip_jax_outputs(model, params, images, tokens), open_clip_outputs(ref, images, tokens))


def test_hf_clip_model_directory(tmp_path):
    """HF CLIPModel (save_pretrained dir: config.json + model.safetensors), 32-wide heads from config.json."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="gelu",
        ),
        vision_config=dict(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=96,
            patch_size=16,
            hidden_act="gelu",
        ),
        projection_dim=80,
        logit_scale_init_value=float(np.log(50.0)),
    )
    ref = randomize_torch_params(transformers.CLIPModel(config), 3).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    model, params = load_pretrained(None, tmp_path)
    assert (model.cfg.vision.heads, model.cfg.text.heads, model.cfg.quick_gelu) == (4, 4, False)
    images, tokens = photos(96), tokenize(TEXTS)
    ours = clip_jax_outputs(model, params, images, tokens)
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tokens).long(),
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
        )
    assert_rel_close(ours["image"], out.image_embeds.numpy())
    assert_rel_close(ours["text"], out.text_embeds.numpy())
    assert_rel_close(ours["logits"], out.logits_per_image.numpy())


@pytest.mark.parametrize("old, new", [(7, 14), (14, 24), (24, 14)])
def test_interpolate_pos_embed_equals_open_clips_resize_pos_embed(old, new):
    """Same grid as open_clip's resize_pos_embed (bicubic, antialias=True, align_corners=False, what its
    load_checkpoint applies), class token kept, to float32 rounding (down-sizing tests the antialias)."""
    from open_clip.model import resize_pos_embed

    rng = np.random.default_rng(100 * old + new)
    pos = rng.standard_normal((1 + old * old, 48)).astype(np.float32)
    # resize_pos_embed(state_dict, model) resizes state_dict's entry in place to model.visual's grid.
    target = open_clip.CLIP(
        16,
        vision_cfg=dict(image_size=4 * new, patch_size=4, width=48, layers=1, head_width=48),
        text_cfg=dict(context_length=8, vocab_size=16, width=16, heads=1, layers=1),
    )
    state_dict = {"visual.positional_embedding": torch.from_numpy(pos.copy())}
    resize_pos_embed(state_dict, target)
    expected = state_dict["visual.positional_embedding"].numpy()
    ours = np.asarray(interpolate_pos_embed(jnp.asarray(pos), new))
    assert ours.shape == expected.shape == (1 + new * new, 48)
    np.testing.assert_array_equal(ours[0], pos[0])
    # Each of the two separable passes sums `taps` float32 products with weights of absolute sum <= 1.25
    # (Keys' cubic, a = -0.5, normalised at the borders); each implementation rounds each term, and the
    # second pass carries the first's error times 1.25.
    taps = 4 * max(1, -(-old // new))
    bound = 2 * 2 * (taps + 1) * np.finfo(np.float32).eps * 1.25**2 * np.abs(pos).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=bound)
