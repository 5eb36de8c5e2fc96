"""The real client: diffusers' Stable Diffusion pipelines conditioned by clip_jax's exported text encoders.

Random clip_jax text encoders (every leaf random) are exported with `export_hf_text_encoder` (weights and
tokenizer files); diffusers' StableDiffusionPipeline and StableDiffusionXLPipeline are built offline around
them from tiny random UNet / VAE configs like diffusers' own fast tests use. `pipeline.encode_prompt(...)`
must return what `clip_jax.conditioning` returns for the same prompts (1e-4 relative, fp32), and a 2-step
generation must run through each pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import transformers  # noqa: E402
from test_text_conditioning import assert_rel_close  # noqa: E402

from clip_jax.conditioning import SD1, SD2, encode_prompts, encode_prompts_sdxl  # noqa: E402
from clip_jax.models.config import TextConfig  # noqa: E402
from clip_jax.models.text_encoder import TextEncoderConfig, text_encoder, text_encoder_param_shapes  # noqa: E402
from clip_jax.tokenizer import EOT_TOKEN  # noqa: E402
from clip_jax.weights.hf_export import export_hf_text_encoder  # noqa: E402

PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor of a lighthouse at dusk"]
NEGATIVE = ["blurry, low quality", ""]


def random_encoder(cfg: TextEncoderConfig, seed: int) -> dict:
    """Per-layer params with every leaf random: LayerNorm scales 1 + N(0, 0.2^2), the rest N(0, 0.05^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return (1 + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, text_encoder_param_shapes(cfg))


def exported(tmp_path, name: str, cfg: TextEncoderConfig, pad_token: int, seed: int):
    """(clip_jax model, params, transformers encoder, tokenizer) of one random encoder, through HF files."""
    params = random_encoder(cfg, seed)
    out = export_hf_text_encoder(params, cfg, tmp_path / name, pad_token=pad_token)
    cls = transformers.CLIPTextModelWithProjection if cfg.embed_dim else transformers.CLIPTextModel
    return (
        text_encoder(cfg),
        params,
        cls.from_pretrained(out).eval(),
        transformers.CLIPTokenizer.from_pretrained(out),
    )


def tiny_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def scheduler():
    return diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def tiny_unet(cross_attention_dim: int, **sdxl):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=2,
        **sdxl,
    ).eval()


def generate(pipe, **kw) -> np.ndarray:
    image = pipe(
        PROMPTS[0],
        negative_prompt=NEGATIVE[0],
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kw,
    ).images
    return image


@pytest.mark.parametrize(
    "encoding, quick_gelu, pad_token",
    [(SD1, True, EOT_TOKEN), (SD2, False, 0)],
    ids=["sd1", "sd2"],
)
def test_stable_diffusion_pipeline(tmp_path, encoding, quick_gelu, pad_token):
    cfg = TextEncoderConfig(TextConfig(width=32, heads=2, layers=3), None, quick_gelu=quick_gelu)
    model, params, hf_encoder, tokenizer = exported(tmp_path, "text_encoder", cfg, pad_token, seed=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=hf_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(32),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=NEGATIVE)
        _, empty = pipe.encode_prompt(PROMPTS, "cpu", 1, True)  # no negative prompt: ""
    cond = encode_prompts(model, params, PROMPTS, NEGATIVE, encoding)
    assert_rel_close(cond.prompt_embeds, embeds.numpy(), what="prompt_embeds")
    assert_rel_close(cond.negative_prompt_embeds, negative.numpy(), what="negative_prompt_embeds")
    assert_rel_close(
        encode_prompts(model, params, PROMPTS, "", encoding).negative_prompt_embeds, empty.numpy()
    )
    # clip_skip is checked against transformers in test_text_conditioning: diffusers 0.42's clip_skip path
    # reads text_encoder.text_model, which transformers 5's CLIPTextModel no longer has.
    image = generate(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_stable_diffusion_xl_pipeline(tmp_path):
    """SDXL: the two encoders' penultimate states concatenated, and the second's projected pooled output."""
    cfg_1 = TextEncoderConfig(TextConfig(width=32, heads=2, layers=3), None, quick_gelu=True)
    cfg_2 = TextEncoderConfig(TextConfig(width=32, heads=4, layers=3), 32, quick_gelu=False)
    model_1, params_1, enc_1, tok_1 = exported(tmp_path, "text_encoder", cfg_1, EOT_TOKEN, seed=2)
    model_2, params_2, enc_2, tok_2 = exported(tmp_path, "text_encoder_2", cfg_2, 0, seed=3)
    assert (tok_1.pad_token, tok_2.pad_token) == ("<|endoftext|>", "!")
    unet = tiny_unet(
        64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text + 6 time ids of 8
        use_linear_projection=True,
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=enc_1,
        text_encoder_2=enc_2,
        tokenizer=tok_1,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=scheduler(),
    )
    with torch.no_grad():
        expected = pipe.encode_prompt(PROMPTS, device="cpu", negative_prompt=NEGATIVE)
        zeros = pipe.encode_prompt(PROMPTS, device="cpu")  # force_zeros_for_empty_prompt
    ours = encode_prompts_sdxl((model_1, params_1), (model_2, params_2), PROMPTS, NEGATIVE)
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    for name, got, want in zip(names, ours, expected, strict=True):
        assert_rel_close(got, want.numpy(), what=name)
    ours_zeros = encode_prompts_sdxl((model_1, params_1), (model_2, params_2), PROMPTS)
    for got, want in zip(ours_zeros, zeros, strict=True):
        np.testing.assert_allclose(
            got, want.numpy(), rtol=1e-4, atol=1e-6 * float(np.abs(want.numpy()).max())
        )
    image = generate(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
