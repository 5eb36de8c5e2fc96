"""SigLIP and SigLIP 2 weights in every format they come in, each against the library that reads it.

- open_clip's timm-trunk models (`visual.trunk.*`, timm's MAP head, open_clip's SigLIP text tower):
  reference `open_clip.create_model(name, pretrained=None)` on randomised weights, saved as a state dict;
- big_vision's `.npz` (scanned `encoderblock/` and unscanned `encoderblock_N/`): reference open_clip's
  `load_big_vision_weights` reading the same random file into the same open_clip model.

Every parameter is drawn at random (LayerNorm scales and biases, the probe, logit scale and bias), and
features and logits must agree to 1e-4 relative in fp32. The towers are open_clip's real configs with fewer
blocks and a smaller vocabulary (the sizes of each block are the real ones), so that the test runs in
seconds; one full-size ViT-B-16-SigLIP checks the whole real config once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import load_pretrained
from clip_jax.models.config import CLIPConfig, get_model_config, open_clip_gelu
from clip_jax.siglip_tokenizer import train_sentencepiece
from clip_jax.weights.big_vision import save_big_vision
from clip_jax.weights.infer import infer_config
from clip_jax.weights.load import param_shapes
from clip_jax.weights.open_clip import expected_shapes

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

REL = 1e-4
LAYERS = 2
VOCAB = 1000


def assert_rel_close(actual, expected, rel: float = REL) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    assert err <= rel, f"max relative error {err:.3g} > {rel}"
    return err


def randomize_every_parameter(model, seed: int):
    """Every tensor drawn anew: norm scales 1 + N(0, 0.2^2), the logit scale log U(5, 20), the logit bias
    N(-5, 1), everything else N(0, 0.05^2) (weights, biases, embeddings, the probe)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name == "logit_scale":
                p.copy_(torch.log(5 + 15 * torch.rand(p.shape, generator=gen, dtype=p.dtype)))
            elif name == "logit_bias":
                p.copy_(-5 + noise)
            elif p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.05 * noise)
    return model


@contextlib.contextmanager
def fewer_trunk_blocks(depth: int):
    """timm.create_model with `depth` blocks: open_clip's TimmModel builds the trunk through it."""
    original = timm.create_model
    with mock.patch.object(timm, "create_model", functools.partial(original, depth=depth)):
        yield


def reduced_open_clip(name: str, seed: int, full: bool = False):
    """(open_clip model, its clip_jax config as open_clip computes it): open_clip's config of `name` with
    LAYERS blocks per tower and a VOCAB-piece vocabulary unless `full`, every parameter random."""
    cfg = open_clip.get_model_config(name)
    want = open_clip_gelu(name)
    if full:
        model = open_clip.create_model(name, pretrained=None)
    else:
        cfg = json.loads(json.dumps(cfg))
        cfg["text_cfg"].update(layers=LAYERS, vocab_size=VOCAB)
        with fewer_trunk_blocks(LAYERS):
            model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
        want = want.replace(
            vision=dataclasses.replace(want.vision, layers=LAYERS),
            text=dataclasses.replace(want.text, layers=LAYERS, vocab_size=VOCAB),
        )
    return randomize_every_parameter(model, seed).eval(), want


def compare_with_open_clip(ref, model, params, seed: int = 0) -> dict[str, float]:
    """Image and text features and the logits of clip_jax's model against open_clip's, on random images and
    random token ids (two rows: one image is enough for a full-size model)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    tokens = rng.integers(0, cfg.text.vocab_size, (2, cfg.text.context_length)).astype(np.int32)

    @jax.jit
    def fwd(p, x, t):
        img, txt, scale, bias = model.apply({"params": p}, x, t)
        return img, txt, scale * img @ txt.T + bias

    img, txt, logits = fwd(params, jnp.asarray(images), jnp.asarray(tokens))
    with torch.no_grad():
        r_img, r_txt, r_scale, r_bias = ref(
            torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(tokens).long()
        )
        r_logits = r_scale * r_img @ r_txt.T + r_bias
    return {
        "image": assert_rel_close(img, r_img.numpy()),
        "text": assert_rel_close(txt, r_txt.numpy()),
        "logits": assert_rel_close(logits, r_logits.numpy()),
    }


def save_state_dict(model, directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


OPEN_CLIP_SIGLIPS = [
    "ViT-B-16-SigLIP",  # SigLIP: exact GELU in both of open_clip's towers
    "ViT-SO400M-14-SigLIP-384",  # So400m's 3.7362 MLP ratio, 27x27 grid from 384 px
    "ViT-B-16-SigLIP2",  # SigLIP 2: timm's exact-GELU trunk beside a tanh-GELU text tower
    "ViT-SO400M-14-SigLIP2",
    "ViT-gopt-16-SigLIP2-256",  # a tanh-GELU trunk, 1536 wide, with a 1152-wide text tower
]


@pytest.mark.parametrize("name", OPEN_CLIP_SIGLIPS)
def test_open_clip_timm_trunk_parity(name, tmp_path):
    """open_clip's SigLIP state dict loads (timm's names renamed, its q and kv stacked) and, with each
    tower's GELU as open_clip computes it (`open_clip_gelu`), gives open_clip's features and logits."""
    ref, cfg = reduced_open_clip(name, seed=1)
    path = save_state_dict(ref, tmp_path)
    model, params = load_pretrained(cfg, path)
    errors = compare_with_open_clip(ref, model, params)
    print(name, "max relative errors", errors)


def test_open_clip_full_size_config_and_the_trained_gelu(tmp_path):
    """The full-size ViT-B-16-SigLIP: its open_clip_config.json alone names the config; by default the
    model computes the tanh GELU big_vision trained it with, which differs from open_clip's exact GELU by
    more than the parity bar, and `open_clip_gelu` gives open_clip's features exactly."""
    name = "ViT-B-16-SigLIP"
    ref, cfg = reduced_open_clip(name, seed=2, full=True)
    path = save_state_dict(ref, tmp_path)
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip.get_model_config(name)})
    )
    trained, params = load_pretrained(None, path)
    assert trained.cfg == get_model_config(name) and trained.cfg.gelu_approximate
    model, _ = load_pretrained(open_clip_gelu(name), path)
    assert model.cfg == cfg
    print("open_clip gelu", compare_with_open_clip(ref, model, params))
    with pytest.raises(AssertionError, match="max relative error"):
        compare_with_open_clip(ref, trained, params)


def random_siglip_params(cfg: CLIPConfig, seed: int) -> dict:
    """Every parameter of `cfg`'s model drawn at random, as randomize_every_parameter draws them."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['logit_scale']"):
            return np.log(rng.uniform(5, 20, leaf.shape)).astype(np.float32)
        if name.endswith("['logit_bias']"):
            return (rng.standard_normal(leaf.shape) - 5).astype(np.float32)
        if name.endswith("['scale']"):
            return (1 + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(cfg))


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP2"])
@pytest.mark.parametrize("scanned", [False, True])
def test_big_vision_npz_parity(name, scanned, tmp_path):
    """A random big_vision .npz, read by open_clip's load_big_vision_weights into open_clip's model and by
    clip_jax, gives the same features and logits (open_clip's GELU in both); the file written from clip_jax's
    params, read back, is those params."""
    from open_clip.convert import load_big_vision_weights

    ref, cfg = reduced_open_clip(name, seed=3)
    params = random_siglip_params(cfg, seed=4)
    path = save_big_vision(params, tmp_path / "siglip.npz", scanned=scanned)
    keys = set(np.load(path).files)
    assert ("params/img/Transformer/encoderblock/LayerNorm_0/scale" in keys) == scanned
    assert ("params/txt/Encoder_0/encoderblock_1/LayerNorm_0/scale" in keys) == (not scanned)
    load_big_vision_weights(ref, str(path))
    model, loaded = load_pretrained(cfg, path)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), loaded, params)
    assert all(jax.tree.leaves(same))
    print(name, "scanned" if scanned else "unscanned", compare_with_open_clip(ref, model, loaded))


def test_big_vision_npz_names_its_model_from_shapes(tmp_path):
    """Without a config, the .npz's shapes name the model (SigLIP vs SigLIP 2 by the vocabulary), with the
    tanh GELU it was trained with; shapes of no named model ask for the name."""
    for name in ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-SO400M-14-SigLIP-384", "ViT-L-16-SigLIP2-256"):
        cfg = get_model_config(name)
        fake = {k: np.broadcast_to(np.float32(0), s) for k, s in expected_shapes(param_shapes(cfg)).items()}
        fake["logit_bias"] = np.float32(-10.0)
        assert infer_config(fake, quick_gelu=False) == cfg, name
    tiny = get_model_config("tiny-siglip")
    tiny = tiny.replace(embed_dim=48, vision=dataclasses.replace(tiny.vision, width=48))
    path = save_big_vision(random_siglip_params(tiny, 0), tmp_path / "odd.npz")
    with pytest.raises(ValueError, match="pass the model name"):
        load_pretrained(None, path)


def test_big_vision_npz_unknown_and_missing_keys_are_named(tmp_path):
    cfg = get_model_config("tiny-siglip")
    params = random_siglip_params(cfg, 0)
    arrays = dict(np.load(save_big_vision(params, tmp_path / "a.npz")))
    arrays["params/img/extra/kernel"] = np.zeros((2, 2), np.float32)
    del arrays["params/txt/head/bias"]
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(ValueError) as info:
        load_pretrained("tiny-siglip", tmp_path / "b.npz")
    message = str(info.value)
    assert "img/extra/kernel" in message and "text_projection.bias" in message


# ----------------------------------------------------------------------------------------------------------
# HF SigLIP 2: fixed-resolution directories (model_type "siglip", Gemma tokenizer.model) load; NaFlex does not
# ----------------------------------------------------------------------------------------------------------

GEMMA_WORDS = (
    "a photo of the cat dog bird car tree red blue green big small on in with and picture Café naïve".split()
)
HARD_TEXTS = [
    "a photo of a cat",
    "A Photo  of THE dog!!",
    "",
    "   leading and trailing   spaces ",
    "tabs\tand\nnewlines",
    "café ☕ naïve — façade 12.5% OFF 2024",
    "a cat <eos> dog",
    "<bos> first",
    "x<unk>y <mask>",
    "a\u2581b \u2581c",
    " ".join(["a very long caption that is truncated"] * 20),
]


def train_gemma_like_spiece(path: Path) -> None:
    """A small BPE sentencepiece model with Gemma's settings (special pieces <pad> 0, <eos> 1, <bos> 2,
    <unk> 3, <mask> 4; byte fallback, digits split, no dummy prefix, whitespace kept)."""
    import random

    pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(GEMMA_WORDS) for _ in range(rng.randint(2, 10))) for _ in range(3000)]
    path.write_bytes(train_sentencepiece(sentences, 300, style="gemma"))


@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory):
    """A HF SigLIP 2 fixed-resolution directory at its real vocabulary (256000) with tiny widths, every
    parameter random, and a Gemma-like tokenizer.model with SigLIP 2's tokenizer_config.json."""
    transformers = pytest.importorskip("transformers")
    from clip_jax.weights.hf import siglip_config_to_hf

    directory = tmp_path_factory.mktemp("siglip2")
    cfg = get_model_config("tiny-siglip")
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=256000))
    ref = transformers.SiglipModel(transformers.SiglipConfig(**siglip_config_to_hf(cfg)))
    randomize_every_parameter(ref, 5).eval().save_pretrained(directory, safe_serialization=True)
    train_gemma_like_spiece(directory / "tokenizer.model")
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True}
    config |= {"padding_side": "right", "model_max_length": 64}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return ref, directory, cfg


def test_hf_siglip2_fixed_resolution_parity_and_gemma_tokenizer(siglip2_dir):
    """config.json names the config (vocabulary 256000); the Gemma tokenizer gives HF's ids (as HF's
    GemmaTokenizer, case kept: what the directory's tokenizer_config.json names), and the model HF's
    features and logits on them."""
    transformers = pytest.importorskip("transformers")
    from clip_jax.siglip_tokenizer import GemmaSiglipTokenizer, find_siglip_tokenizer

    ref, directory, cfg = siglip2_dir
    model, params = load_pretrained(None, directory)
    assert model.cfg == cfg
    ours = find_siglip_tokenizer(directory)
    assert isinstance(ours, GemmaSiglipTokenizer) and not ours.lower
    hf = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert (ours.pad_id, ours.eos_id) == (hf.pad_token_id, hf.eos_token_id) == (0, 1)
    want = hf(HARD_TEXTS, padding="max_length", truncation=True, max_length=64)["input_ids"]
    got = ours(HARD_TEXTS)
    for text, w, g in zip(HARD_TEXTS, want, got, strict=True):
        assert list(g) == w, text
    assert got[-1, -1] == ours.eos_id and got[0, -1] == ours.pad_id and 3 in got[8]  # truncation, pad, <unk>
    # Lowercased as big_vision trained SigLIP 2 (HF's Siglip2Tokenizer): HF's ids of the lowercased text.
    lower = GemmaSiglipTokenizer(directory / "tokenizer.model", lower=True)
    lowered = [t.replace("<EOS>", "<eos>") for t in (x.lower() for x in HARD_TEXTS)]
    want_lower = hf(lowered, padding="max_length", truncation=True, max_length=64)["input_ids"]
    assert [list(r) for r in lower(HARD_TEXTS)] == want_lower
    assert list(lower(["A Photo"])[0]) != list(ours(["A Photo"])[0])

    rng = np.random.default_rng(6)
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    tokens = got[:3]
    img, txt, scale, bias = model.apply({"params": params}, images, tokens)
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tokens).long(),
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
        )
    assert_rel_close(img, out.image_embeds.numpy())
    assert_rel_close(txt, out.text_embeds.numpy())
    assert_rel_close(scale * img @ txt.T + bias, out.logits_per_image.numpy())


def test_hf_siglip2_naflex_is_refused_naming_the_fixed_resolution_checkpoint(siglip2_dir, tmp_path):
    _, directory, _ = siglip2_dir
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "siglip2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"NaFlex.*fixed-resolution checkpoint.*siglip2-base-patch16-224"):
        load_pretrained(None, tmp_path)


def test_export_siglip_hf_round_trip(siglip2_dir, tmp_path):
    """export_siglip_hf writes a directory transformers.SiglipModel.from_pretrained loads, its tensors those
    of the original HF model, with the tokenizer files beside them (clip_jax reads it back the same)."""
    transformers = pytest.importorskip("transformers")
    from clip_jax.weights.hf import export_siglip_hf

    ref, directory, cfg = siglip2_dir
    model, params = load_pretrained(None, directory)
    out = export_siglip_hf(params, model.cfg, tmp_path / "export", tokenizer_dir=directory)
    loaded = transformers.SiglipModel.from_pretrained(out)
    want = ref.state_dict()
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[key].numpy(), err_msg=key)
    assert (out / "tokenizer.model").is_file()
    again, params_again = load_pretrained(None, out)
    assert again.cfg == cfg
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params_again, params)))


def test_convert_format_hf_writes_a_siglip_directory(siglip2_dir, tmp_path):
    """`python -m clip_jax.convert --format hf` on a SigLIP directory writes a SiglipModel directory with the
    tokenizer files; a SigLIP source without its sentencepiece file is refused before anything is written."""
    transformers = pytest.importorskip("transformers")
    from clip_jax import convert
    from clip_jax.cli_errors import run_cli

    ref, directory, _ = siglip2_dir
    out = convert.main(["--input", str(directory), "--output", str(tmp_path / "hf"), "--format", "hf"])
    loaded = transformers.SiglipModel.from_pretrained(out)
    want = ref.state_dict()
    for key, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[key].numpy(), err_msg=key)
    assert (out / "tokenizer.model").is_file() and (out / "tokenizer_config.json").is_file()

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).symlink_to(directory / name)
    argv = ["--input", str(bare), "--output", str(tmp_path / "hf2"), "--format", "hf"]
    assert run_cli(convert.main, "clip_jax.convert", argv) == 2
    assert not (tmp_path / "hf2").exists()
