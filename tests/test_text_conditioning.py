"""Text-only CLIP encoders (Stable Diffusion's conditioning) load as text-only models and equal transformers'.

Tiny random transformers CLIPTextModel / CLIPTextModelWithProjection in the shapes of SD 1 (QuickGELU), SD 2
(GELU, its conditioning the last layer of a tower cut short) and SDXL's second encoder (GELU, projected),
every LayerNorm scale and bias, linear bias and positional embedding randomised, are saved as
`save_pretrained` directories, loaded with `load_text_encoder`, and compared at every layer, after the
final LayerNorm, pooled and projected: 1e-4 relative in fp32 (`REL`). The conditioning API
(`clip_jax.conditioning`) is checked against the same encoders.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from clip_jax.tokenizer import EOT_TOKEN, tokenize  # noqa: E402
from clip_jax.weights.text_encoder import load_text_encoder, text_encoder_config  # noqa: E402

REL = 1e-4
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "A Watercolor of a lighthouse, at dusk.",
    " ".join(["a very long prompt that is cut at seventy seven tokens"] * 10),
]
# name: (CLIPTextConfig fields, with projection)
ENCODERS = {
    "sd1": (dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=3, intermediate_size=96,
                 hidden_act="quick_gelu"), False),
    "sd2": (dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=5, intermediate_size=256,
                 hidden_act="gelu"), False),
    "sdxl2": (dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=4, intermediate_size=192,
                   hidden_act="gelu", projection_dim=40), True),
}  # fmt: skip


def assert_rel_close(actual, expected, rel: float = REL, what: str = "") -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert err <= rel, f"{what}: max relative error {err:.3g} > {rel}"


def randomize_text_model(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm scales (1 + N(0, 0.2^2)), biases and positional embeddings (N(0, 0.1^2)): at their
    inits (ones, zeros) a mapping that dropped or swapped them would pass. Linear weights and the token
    embedding are random from the init already."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1 or "position" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def hf_text_model(fields: dict, projection: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **fields)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return randomize_text_model(cls(config), seed).eval()


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def saved_encoder(request, tmp_path_factory):
    """(name, transformers model, its save_pretrained directory)."""
    fields, projection = ENCODERS[request.param]
    ref = hf_text_model(fields, projection, seed=sorted(ENCODERS).index(request.param))
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path, safe_serialization=True)
    return request.param, ref, path


@torch.no_grad()
def hf_outputs(model: torch.nn.Module, tokens: np.ndarray) -> dict[str, np.ndarray]:
    ids = torch.from_numpy(tokens).long()
    # transformers 5's CLIPTextModel is the text transformer itself; WithProjection wraps one.
    out = getattr(model, "text_model", model)(input_ids=ids, output_hidden_states=True)
    result = {
        "hidden_states": [h.numpy() for h in out.hidden_states[1:]],  # [0] is the embeddings' output
        "last_hidden_state": out.last_hidden_state.numpy(),
        "pooled": out.pooler_output.numpy(),
    }
    if hasattr(model, "text_projection"):
        result["projected"] = model(input_ids=ids).text_embeds.numpy()
    return result


@pytest.mark.parametrize("pad_token", [0, EOT_TOKEN])
def test_text_encoder_equals_transformers_at_every_layer(saved_encoder, pad_token):
    name, ref, path = saved_encoder
    model, params = load_text_encoder(path)
    fields, projection = ENCODERS[name]
    cfg = text_encoder_config(model)
    assert (cfg.text.heads, cfg.text.layers, cfg.quick_gelu) == (
        fields["num_attention_heads"],
        fields["num_hidden_layers"],
        fields["hidden_act"] == "quick_gelu",
    )
    assert (cfg.embed_dim is not None) == projection and "visual" not in params
    tokens = tokenize(PROMPTS, pad_token=pad_token)
    layers = tuple(range(cfg.text.layers))
    ours = jax.jit(lambda p, t: model.apply({"params": p}, t, hidden_layers=layers))(params, tokens)
    expected = hf_outputs(ref, tokens)
    for i, (h, e) in enumerate(zip(ours.hidden_states, expected["hidden_states"], strict=True)):
        assert_rel_close(h, e, what=f"hidden state of block {i}")
    assert_rel_close(ours.last_hidden_state, expected["last_hidden_state"], what="last_hidden_state")
    assert_rel_close(ours.pooled, expected["pooled"], what="pooled")
    if projection:
        assert_rel_close(ours.projected, expected["projected"], what="projected")
        plain = model.apply({"params": params}, jnp.asarray(tokens))  # the CLIP-style call: projected
        assert_rel_close(plain, expected["projected"], what="__call__")
    else:
        assert ours.projected is None


def test_every_randomised_leaf_shows(saved_encoder):
    """Each LayerNorm scale/bias, linear bias and the positional embedding, put back at its init, changes
    the compared outputs by more than the tolerance: the parity above would catch a mapping that lost it."""
    name, ref, path = saved_encoder
    model, params = load_text_encoder(path)
    tokens = jnp.asarray(tokenize(PROMPTS[:2]))
    fwd = jax.jit(lambda p: model.apply({"params": p}, tokens, hidden_layers=()))
    base = fwd(params)
    init = {"scale": 1.0, "bias": 0.0, "positional_embedding": 0.0}
    count = 0
    for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        if keypath[-1].key not in init:
            continue
        reset = jax.tree_util.tree_map_with_path(
            lambda kp, a, k=keypath: jnp.full_like(a, init[k[-1].key]) if kp == k else a, params
        )
        out = fwd(reset)
        changes = [
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for a, b in ((out.last_hidden_state, base.last_hidden_state), (out.pooled, base.pooled))
        ]
        assert max(changes) > 10 * REL, jax.tree_util.keystr(keypath)
        count += 1
    # Per block 2 LayerNorms (scale, bias), q/k/v and out biases, 2 MLP biases; ln_final; positions.
    assert count == ENCODERS[name][0]["num_hidden_layers"] * 8 + 2 + 1


def test_text_tower_of_a_two_tower_checkpoint(tmp_path):
    """An open_clip CLIP checkpoint gives its text tower (projected) as a text encoder, no image tower."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    from test_weights import randomize_torch_params

    torch.manual_seed(5)
    cfg = dict(
        embed_dim=64,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    )
    ref = randomize_torch_params(open_clip.CLIP(**cfg, quick_gelu=False), 5).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, params = load_text_encoder(path, "tiny")
    assert "visual" not in params and model.embed_dim == 64
    tokens = tokenize(PROMPTS)
    ours = model.apply({"params": params}, jnp.asarray(tokens), hidden_layers=())
    with torch.no_grad():
        expected = ref.encode_text(torch.from_numpy(tokens).long()).numpy()
    assert_rel_close(ours.projected, expected, what="projected")


def test_two_tower_loader_points_text_only_checkpoints_to_load_text_encoder(saved_encoder):
    from clip_jax.weights import load_pretrained

    _, _, path = saved_encoder
    with pytest.raises(ValueError, match="text-only.*load_text_encoder"):
        load_pretrained(None, path)


def test_conditioning_api_equals_transformers(saved_encoder):
    """encode_prompts: positive and negative prompts from one pass equal transformers' outputs for the same
    ids: last_hidden_state (SD 1/2), final_layer_norm(hidden_states[-2]) (clip_skip=1), hidden_states[-2]
    and text_embeds (SDXL's second encoder)."""
    from clip_jax.conditioning import SD1, SD2, SDXL_ENCODER_2, encode_prompts

    name, ref, path = saved_encoder
    model, params = load_text_encoder(path)
    prompts, negative = PROMPTS[:2], "low quality"
    inner = getattr(ref, "text_model", ref)
    for encoding in (SD1, SD2, SD1.with_clip_skip(1)) + ((SDXL_ENCODER_2,) if name == "sdxl2" else ()):
        cond = encode_prompts(model, params, prompts, negative, encoding)
        for ours, texts in ((cond.prompt_embeds, prompts), (cond.negative_prompt_embeds, [negative] * 2)):
            ids = torch.from_numpy(tokenize(texts, pad_token=encoding.pad_token)).long()
            with torch.no_grad():
                out = inner(input_ids=ids, output_hidden_states=True)
                expected = out.hidden_states[encoding.layer]
                if encoding.final_norm:
                    expected = inner.final_layer_norm(expected)
            assert_rel_close(ours, expected.numpy(), what=f"{encoding}")
        if encoding.pooled:
            with torch.no_grad():
                expected = ref(input_ids=torch.from_numpy(tokenize(prompts, pad_token=0)).long()).text_embeds
            assert_rel_close(cond.pooled_prompt_embeds, expected.numpy(), what="pooled")
    assert encode_prompts(model, params, prompts, None).negative_prompt_embeds is None
    with pytest.raises(ValueError, match="3 negative prompts for 2 prompts"):
        encode_prompts(model, params, prompts, ["a", "b", "c"])


def test_sd1_padding_matters(tmp_path):
    """Why the pad token is part of the encoding: the same prompt padded with 0 and with EOT gives other
    conditioning at the padding positions (SD's UNet attends to all 77), the same up to the EOT."""
    from clip_jax.conditioning import SD1, SD2, encode_prompts

    hf_text_model(ENCODERS["sd1"][0], False, seed=11).save_pretrained(tmp_path, safe_serialization=True)
    model, params = load_text_encoder(tmp_path)
    eot = PROMPTS[0].count(" ") + 2  # one token per word here
    a = encode_prompts(model, params, PROMPTS[0], None, SD1).prompt_embeds
    b = encode_prompts(model, params, PROMPTS[0], None, SD2).prompt_embeds
    np.testing.assert_allclose(a[:, : eot + 1], b[:, : eot + 1], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(a[:, eot + 1 :] - b[:, eot + 1 :]))) > 0.1 * float(jnp.max(jnp.abs(a)))
