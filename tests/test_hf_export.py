"""Export to transformers' format: what clip_jax writes, transformers loads, and computes the same.

Round trips HF -> clip_jax -> HF (every tensor back bit for bit, the model's outputs to 1e-4) and
open_clip -> clip_jax -> HF (transformers' CLIPModel equals open_clip's features to 1e-4 relative, fp32),
a text encoder as CLIPTextModel(WithProjection), `python -m clip_jax.convert --format hf`, and the tokenizer
files: transformers' CLIPTokenizer reads them and gives clip_jax's token ids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_text_conditioning import ENCODERS, PROMPTS, assert_rel_close, hf_text_model  # noqa: E402
from test_weights import random_tiny_params, randomize_torch_params  # noqa: E402

from clip_jax.tokenizer import EOT_TOKEN, tokenize  # noqa: E402
from clip_jax.weights import load_pretrained  # noqa: E402
from clip_jax.weights.hf_export import export_hf, export_hf_text_encoder, write_tokenizer_files  # noqa: E402
from clip_jax.weights.text_encoder import load_text_encoder_params  # noqa: E402

HF_CLIP = dict(
    text_config=dict(
        hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"
    ),
    vision_config=dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="gelu",
    ),
    projection_dim=48,
)


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def images(size: int, n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


@torch.no_grad()
def clip_model_outputs(model, pixels: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    out = model(
        input_ids=torch.from_numpy(tokens).long(), pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)
    )
    return {
        "image": out.image_embeds.numpy(),
        "text": out.text_embeds.numpy(),
        "logits": out.logits_per_image.numpy(),
    }


def test_hf_clip_round_trip(tmp_path):
    """HF CLIPModel -> clip_jax -> HF: the same tensors (bit for bit), outputs and loadable tokenizer."""
    torch.manual_seed(0)
    ref = randomize_torch_params(transformers.CLIPModel(transformers.CLIPConfig(**HF_CLIP)), 0).eval()
    ref.save_pretrained(tmp_path / "in", safe_serialization=True)
    model, params = load_pretrained(None, tmp_path / "in")
    out = export_hf(params, model.cfg, tmp_path / "out")
    back = transformers.CLIPModel.from_pretrained(out).eval()
    assert_same_tensors(ref, back)
    pixels, tokens = images(32), tokenize(PROMPTS)
    expected, got = clip_model_outputs(ref, pixels, tokens), clip_model_outputs(back, pixels, tokens)
    for k in expected:
        assert_rel_close(got[k], expected[k], what=k)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["CLIPModel"]
    processor = transformers.CLIPImageProcessor.from_pretrained(out)
    assert processor.crop_size == {"height": 32, "width": 32}
    with pytest.raises(FileExistsError, match="already holds"):
        export_hf(params, model.cfg, out)


def test_open_clip_to_hf_equals_open_clip(tmp_path):
    """open_clip -> clip_jax -> HF: transformers' CLIPModel computes open_clip's features and logits."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    cfg = dict(
        embed_dim=64,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    )
    ref = randomize_torch_params(open_clip.CLIP(**cfg, quick_gelu=True), 1).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, params = load_pretrained("tiny-quickgelu", path)
    hf = transformers.CLIPModel.from_pretrained(export_hf(params, model.cfg, tmp_path / "hf")).eval()
    pixels, tokens = images(32, seed=1), tokenize(PROMPTS)
    got = clip_model_outputs(hf, pixels, tokens)
    with torch.no_grad():
        img = ref.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
        txt = ref.encode_text(torch.from_numpy(tokens).long(), normalize=True)
        logits = ref.logit_scale.exp() * img @ txt.T
    assert_rel_close(got["image"], img.numpy(), what="image")
    assert_rel_close(got["text"], txt.numpy(), what="text")
    assert_rel_close(got["logits"], logits.numpy(), what="logits")


@pytest.mark.parametrize("name", ["sd1", "sdxl2"])
def test_text_encoder_round_trip(tmp_path, name):
    """CLIPTextModel(WithProjection) -> clip_jax -> HF: the same class and tensors, bit for bit."""
    fields, projection = ENCODERS[name]
    ref = hf_text_model(fields, projection, seed=7)
    ref.save_pretrained(tmp_path / "in", safe_serialization=True)
    cfg, params = load_text_encoder_params(tmp_path / "in")
    out = export_hf_text_encoder(params, cfg, tmp_path / "out")
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls.__name__]
    back = cls.from_pretrained(out).eval()
    assert_same_tensors(ref, back)


def test_clip_text_tower_exports_as_text_model_with_projection(tmp_path):
    """A CLIP's params["text"] is a CLIPTextModelWithProjection: HF's text_embeds equal clip_jax's."""
    import jax

    from clip_jax import CLIP, get_model_config
    from clip_jax.models.text_encoder import TextEncoderConfig

    cfg, tiny_params = get_model_config("tiny"), random_tiny_params(3)
    out = export_hf_text_encoder(tiny_params["text"], TextEncoderConfig.from_clip(cfg), tmp_path)
    hf = transformers.CLIPTextModelWithProjection.from_pretrained(out).eval()
    tokens = tokenize(PROMPTS)
    model = CLIP(cfg)
    ours = jax.jit(lambda p, t: model.apply({"params": p}, t, method=model.encode_text))(tiny_params, tokens)
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(tokens).long()).text_embeds.numpy()
    assert_rel_close(ours, expected, what="text_embeds")


def test_convert_cli_hf(tmp_path):
    """`python -m clip_jax.convert --format hf`: a text encoder stays one; a CLIP becomes a CLIPModel."""
    from clip_jax.convert import main

    fields, projection = ENCODERS["sd2"]
    ref = hf_text_model(fields, projection, seed=8)
    ref.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    out = main(
        ["--input", str(tmp_path / "text_encoder"), "--output", str(tmp_path / "hf"), "--format", "hf"]
    )
    assert_same_tensors(ref, transformers.CLIPTextModel.from_pretrained(out))
    torch.manual_seed(2)
    clip = randomize_torch_params(transformers.CLIPModel(transformers.CLIPConfig(**HF_CLIP)), 2).eval()
    clip.save_pretrained(tmp_path / "clip", safe_serialization=True)
    out = main(["--input", str(tmp_path / "clip"), "--output", str(tmp_path / "clip_hf"), "--format", "hf"])
    assert_same_tensors(clip, transformers.CLIPModel.from_pretrained(out))


@pytest.mark.parametrize("pad_token, pad_name", [(EOT_TOKEN, "<|endoftext|>"), (0, "!")])
def test_tokenizer_files_give_clip_jax_ids(tmp_path, pad_token, pad_name):
    """transformers' CLIPTokenizer from the written files pads as told and tokenizes as clip_jax does
    (truncation keeps the EOT last, as diffusers' padding="max_length", truncation=True asks)."""
    write_tokenizer_files(tmp_path, pad_token=pad_token)
    tok = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token, tok.pad_token_id, tok.model_max_length) == (pad_name, pad_token, 77)
    prompts = PROMPTS + ["it's a dog's life: 3 cats & 2 dogs", "naïve café, Über-große Äpfel"]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    np.testing.assert_array_equal(ids, tokenize(prompts, pad_token=pad_token))
    # A known difference, kept: HF splits its pad token out of the text as a special token, so with SD 2's
    # and SDXL's second tokenizer (pad "!") a literal "!" becomes id 0, not BPE's "!</w>" (256) that
    # clip_jax and open_clip (SD 2's training tokenizer) give. docs/text_conditioning.md says so.
    hf_bang = tok(["wow!"], padding="max_length", max_length=77, return_tensors="np").input_ids[0, 2]
    assert (hf_bang, tokenize(["wow!"])[0, 2]) == ((0, 256) if pad_token == 0 else (256, 256))


def test_export_refuses_what_hf_clip_cannot_express(tmp_path):
    from clip_jax.models import CLIP, get_model_config, random_params

    cfg = get_model_config("tiny-siglip")
    with pytest.raises(ValueError, match="SigLIP"):
        export_hf(random_params(CLIP(cfg)), cfg, tmp_path)
    assert not (tmp_path / "config.json").exists()
