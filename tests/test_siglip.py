"""SigLIP: HF transformers `SiglipModel` weights, its sentencepiece tokenizer, sigmoid probabilities, and
training with the sigmoid loss.

The reference is a tiny random SiglipModel with every parameter drawn at random (LayerNorm scales and
biases, the probe, logit scale and bias included: at their inits a wrong mapping of them would pass),
saved with save_pretrained and loaded through `load_pretrained`. Features and logits must agree to 1e-4
relative in fp32 (the project's parity criterion: a few ulps of fp32 per accumulated product, far
below it). The tokenizer is compared id for id with HF's SiglipTokenizer on a sentencepiece model that
the test trains itself, with the special pieces real SigLIP's spiece.model has (<pad> 0, </s> 1, <unk> 2).
"""

from __future__ import annotations

import io
import json
import math
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import get_model_config, load_pretrained
from clip_jax.models import CLIP, label_probabilities
from clip_jax.siglip_tokenizer import SiglipTokenizer, find_siglip_tokenizer, train_sentencepiece
from clip_jax.weights.hf import siglip_config_from_hf, siglip_config_to_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

REL = 1e-4
TINY = get_model_config("tiny-siglip")
WORDS = (
    "a photo of the cat dog bird car tree house red blue green big small running sitting on in under with "
    "and picture painting sketch close up bright dark image rendering cartoon plane ship truck horse deer "
    "frog apple orange banana chair table flower river mountain sky cloud street city night day two three"
).split()
TEXTS = [
    "a photo of a cat",
    "A Photo, of THE dog!!",
    "",
    "   leading and trailing   spaces ",
    "tabs\tand\nnewlines",
    "café ☕ naïve — façade 12.5% OFF",
    "a cat </s> dog",
    "</s> first",
    "x<unk>y",
    "a\u2581b \u2581c",
    "{} a {}-photo",
    " ".join(["a very long caption that is truncated"] * 20),
    "a photo of a cat</s>",
]


def assert_rel_close(actual, expected, rel: float = REL) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    assert err <= rel, f"max relative error {err:.3g} > {rel}"
    return err


def train_spiece(path) -> None:
    """A small unigram sentencepiece model, trained in memory on made-up captions."""
    rng = random.Random(0)
    sentences = []
    for _ in range(4000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + rng.choice(["", ".", "!", ","]))
    path.write_bytes(train_sentencepiece(sentences, TINY.text.vocab_size))


def hf_siglip_config(**vision):
    """transformers' SiglipConfig of TINY, its vision_config updated by `vision`."""
    fields = siglip_config_to_hf(TINY)
    fields["vision_config"].update(vision)
    return transformers.SiglipConfig(**fields)


def test_config_to_hf_and_back_is_the_same_config():
    for name in ("tiny-siglip", "ViT-B-16-SigLIP"):
        cfg = get_model_config(name)
        assert siglip_config_from_hf(siglip_config_to_hf(cfg)) == cfg, name


def randomize_every_parameter(model, seed: int):
    """Every tensor of the state dict drawn anew: LayerNorm scales 1 + N(0, 0.2^2), the logit scale
    log U(5, 20), the logit bias N(-5, 1), everything else N(0, 0.1^2) (weights, biases, embeddings,
    the probe)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name == "logit_scale":
                p.copy_(torch.log(5 + 15 * torch.rand(p.shape, generator=gen, dtype=p.dtype)))
            elif name == "logit_bias":
                p.copy_(-5 + noise)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """(HF model, its save_pretrained directory with spiece.model): the tiny SigLIP."""
    directory = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    ref = randomize_every_parameter(transformers.SiglipModel(hf_siglip_config()), 0).eval()
    ref.save_pretrained(directory, safe_serialization=True)
    train_spiece(directory / "spiece.model")
    return ref, directory


@pytest.fixture(scope="module")
def loaded(siglip_dir):
    return load_pretrained(None, siglip_dir[1])


def test_tokenizer_matches_hf(siglip_dir):
    """Same ids as HF's SiglipTokenizer with padding="max_length", truncation (how SigLIP is fed):
    canonicalisation, special tokens in the text, EOS, the pad id, truncation to 64."""
    _, directory = siglip_dir
    hf = transformers.SiglipTokenizer(str(directory / "spiece.model"))
    ours = SiglipTokenizer(directory / "spiece.model")
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id)
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (1, 1, 2)  # real SigLIP's: pad is </s>
    want = hf(TEXTS, padding="max_length", truncation=True, max_length=64)["input_ids"]
    got = ours(TEXTS)
    assert got.dtype == np.int32 and got.shape == (len(TEXTS), 64)
    for text, w, g in zip(TEXTS, want, got, strict=True):
        assert list(g) == w, text
    # The texts exercise what they are meant to: lowercasing and punctuation removal (the first two
    # encode alike), truncation (the long one fills the row, EOS last), padding with the pad id.
    assert list(got[0]) == list(ours(["a Photo of a CAT."])[0])
    assert got[11, -1] == ours.eos_id and ours.pad_id in got[0]


def test_tokenizer_needs_neither_torch_nor_transformers(siglip_dir):
    """The tokenizer and the weights load in a process that never imports torch or transformers."""
    _, directory = siglip_dir
    code = (
        "import sys\n"
        "from clip_jax.siglip_tokenizer import find_siglip_tokenizer\n"
        "from clip_jax.weights import load_params_checked\n"
        f"tok = find_siglip_tokenizer({str(directory)!r})\n"
        "assert tok(['a photo of a cat']).shape == (1, 64)\n"
        f"load_params_checked({str(directory)!r})\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_parity_with_hf_siglip_model(siglip_dir, loaded):
    """Image and text embeddings and the logits (scale * cos + bias) of the loaded model equal HF's."""
    ref, directory = siglip_dir
    model, params = loaded
    assert model.cfg == TINY  # the config.json gives the named tiny SigLIP, 16-wide heads and all
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    tokens = find_siglip_tokenizer(directory)(TEXTS)

    @jax.jit
    def fwd(p, x, t):
        img, txt, scale, bias = model.apply({"params": p}, x, t)
        return img, txt, scale * img @ txt.T + bias

    img, txt, logits = fwd(params, jnp.asarray(images), jnp.asarray(tokens))
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tokens).long(),
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
        )
    errors = {
        "image": assert_rel_close(img, out.image_embeds.numpy()),
        "text": assert_rel_close(txt, out.text_embeds.numpy()),
        "logits": assert_rel_close(logits, out.logits_per_image.numpy()),
    }
    print("max relative errors", errors)
    # The sigmoid probabilities HF's docs compute from its logits.
    probs = label_probabilities(img, txt, jnp.exp(params["logit_scale"]), params["logit_bias"])
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits_per_image).numpy(), rtol=1e-4, atol=1e-6)


def test_every_parameter_shows_in_the_outputs(siglip_dir, loaded):
    """Each leaf that a mapping could drop (every non-matrix leaf: norms, biases, probe, embeddings,
    scale and bias) moves the outputs by far more than the tolerance when put back at zero."""
    model, params = loaded
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.standard_normal((2, 32, 32, 3)).astype(np.float32))
    tokens = jnp.asarray(find_siglip_tokenizer(siglip_dir[1])(TEXTS[:3]))

    @jax.jit
    def fwd(p):
        img, txt, scale, bias = model.apply({"params": p}, images, tokens)
        return jnp.concatenate([img.ravel(), txt.ravel(), (scale * img @ txt.T + bias).ravel()])

    base = fwd(params)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    checked = 0
    for path, leaf in leaves:
        if leaf.ndim >= 2 and "probe" not in jax.tree_util.keystr(path):
            continue
        zeroed = jax.tree_util.tree_map_with_path(
            lambda kp, a, kp0=path: jnp.zeros_like(a) if kp == kp0 else a, params
        )
        err = float(jnp.max(jnp.abs(fwd(zeroed) - base)) / jnp.max(jnp.abs(base)))
        assert err > 10 * REL, jax.tree_util.keystr(path)
        checked += 1
    assert checked >= 40


def test_safetensors_file_alone_named_or_inferred_and_scanned(siglip_dir, loaded, tmp_path):
    """The .safetensors file without its config.json loads under the named config (scanned too), or with
    the activation given, under the named config its shapes identify."""
    from clip_jax.models import unstack_layers

    _, directory = siglip_dir
    _, params = loaded
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))
    model, scanned = load_pretrained("tiny-siglip", tmp_path / "model.safetensors", scan=True)
    assert model.scan and same(unstack_layers(scanned), params)
    model, inferred = load_pretrained(None, tmp_path, quick_gelu=False)
    assert model.cfg == TINY.replace(init_logit_bias=float(params["logit_bias"])) and same(inferred, params)


@pytest.mark.parametrize(
    "option, named",
    [
        ({"vision_use_head": False}, "vision_use_head"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"num_channels": 1}, "num_channels"),
    ],
)
def test_unsupported_config_options_are_named(siglip_dir, tmp_path, option, named):
    _, directory = siglip_dir
    config = json.loads((directory / "config.json").read_text())
    config["vision_config"].update(option)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(ValueError, match=named):
        load_pretrained(None, tmp_path)


def test_unknown_tokenizer_option_is_named(siglip_dir, tmp_path):
    _, directory = siglip_dir
    (tmp_path / "spiece.model").symlink_to(directory / "spiece.model")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "strip_accents": True})
    )
    with pytest.raises(ValueError, match="strip_accents"):
        find_siglip_tokenizer(tmp_path)


def test_named_base_config():
    cfg = get_model_config("ViT-B-16-SigLIP")
    v, t = cfg.vision, cfg.text
    assert (v.width, v.layers, v.heads, v.mlp_width, v.patch_size, v.image_size) == (
        768,
        12,
        12,
        3072,
        16,
        224,
    )
    assert (t.width, t.layers, t.heads, t.vocab_size, t.context_length) == (768, 12, 12, 32000, 64)
    assert cfg.embed_dim == 768 and cfg.init_logit_bias == -10 and cfg.init_logit_scale == math.log(10)
    assert cfg.gelu_approximate and not cfg.quick_gelu and cfg.norm_eps == 1e-6
    assert "ViT-B-16-SigLIP-quickgelu" not in __import__("clip_jax").MODEL_CONFIGS
    with pytest.raises(ValueError, match="pool_type"):
        cfg.to_open_clip()  # open_clip builds SigLIP's image tower from timm


def test_zeroshot_sigmoid_probabilities_and_untrimmed_prompts(siglip_dir, loaded):
    """predict's probabilities are per-label sigmoids for a model with a logit bias, and the zero-shot
    classifier feeds SigLIP's text tower full 64-token rows (it pools the last position)."""
    from clip_jax.eval.classifier import build_zeroshot_classifier
    from clip_jax.predict import label_probs

    model, params = loaded
    tok = find_siglip_tokenizer(siglip_dir[1])
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    labels = ["a cat", "a dog", "a bird"]
    probs = label_probs(model, params, images, labels, tokenizer=tok)
    img, txt, scale, bias = model.apply({"params": params}, images, tok(labels))
    np.testing.assert_allclose(probs, jax.nn.sigmoid(scale * img @ txt.T + bias), rtol=1e-5, atol=1e-7)
    assert not np.allclose(probs.sum(-1), 1.0)  # independent per label, not a softmax

    classifier = build_zeroshot_classifier(model, params, ["cat", "dog"], ["a photo of a {}."], tokenizer=tok)
    full = model.apply(
        {"params": params}, tok(["a photo of a cat.", "a photo of a dog."]), method=CLIP.encode_text
    )
    full = np.asarray(full) / np.linalg.norm(full, axis=-1, keepdims=True)
    np.testing.assert_allclose(classifier, full.T, rtol=1e-5, atol=1e-6)


def test_continues_training_with_the_sigmoid_loss(loaded, siglip_dir):
    """Two steps of the train step with the sigmoid loss from the loaded SigLIP: finite, and the loss
    of the first is the sigmoid loss of the loaded model's own outputs."""
    import optax

    from clip_jax.train.losses import sigmoid_loss
    from clip_jax.train.step import init_train_state, make_train_step

    model, params = loaded
    rng = np.random.default_rng(3)
    batch = {
        "image": rng.standard_normal((4, 32, 32, 3)).astype(np.float32),
        "text": find_siglip_tokenizer(siglip_dir[1])(["a red car", "a blue bird", "two cats", "a big tree"]),
    }
    tx = optax.adamw(1e-3)
    state = init_train_state(params, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, loss="sigmoid"))
    img, txt, scale, bias = model.apply({"params": params}, batch["image"], batch["text"])
    expected = float(sigmoid_loss(img, txt, scale, bias))
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert int(metrics["nonfinite"]) == 0 and "logit_bias" in metrics
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert float(state.params["logit_bias"]) != float(params["logit_bias"])


# ----------------------------------------------------------------------------------------------------------
# SigLIP's eval transform and the evaluators with its tokenizer
# ----------------------------------------------------------------------------------------------------------


def generated_images():
    """Images in every PIL mode the transform treats differently, downsampled and upsampled, square and not:
    noise (the hardest case for a resize) and a smooth gradient."""
    from PIL import Image

    rng = np.random.default_rng(4)
    noise = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    y, x = np.mgrid[0:300, 0:200]
    smooth = np.stack([x * 255 // 199, y * 255 // 299, (x + y) * 255 // 498], -1).astype(np.uint8)
    palette = Image.fromarray(noise(40, 40, 3)).convert("P")
    palette.info["transparency"] = 3
    return {
        "rgb_landscape": Image.fromarray(noise(60, 90, 3)),
        "rgb_smooth_portrait": Image.fromarray(smooth),
        "rgb_small": Image.fromarray(noise(20, 17, 3)),
        "gray": Image.fromarray(noise(50, 40)),
        "rgba": Image.fromarray(noise(45, 70, 4)),
        "palette_transparent": palette,
    }


@pytest.mark.parametrize("size, resample", [(32, 3), (224, 3), (32, 2)])
def test_siglip_transform_equals_hf_image_processor(tmp_path, size, resample):
    """SigLIP's transform, read from the preprocessor_config.json HF writes, equals HF's
    SiglipImageProcessor (its PIL backend) bit for bit: the same PIL resize of the whole image, RGB
    conversion before it with transparency on white, x / 255 in float32 (equal to HF's float64
    x * (1/255) rounded to float32 for each of the 256 uint8 values), then (x - 0.5) / 0.5. HF's
    default torchvision backend resizes with torch's uint8 kernel instead, which differs from PIL's by a
    level or two (up to 9 on pure noise downsampled): not the reference here."""
    from clip_jax.preprocess import SIGLIP_HF_PIL_TRANSFORM, preprocess_image, read_hf_transform

    hf = transformers.SiglipImageProcessorPil(size={"height": size, "width": size}, resample=resample)
    hf.save_pretrained(tmp_path)
    transform = read_hf_transform(tmp_path, size)
    assert transform.resize == "square" and transform.mean == transform.std == (0.5, 0.5, 0.5)
    assert transform == SIGLIP_HF_PIL_TRANSFORM if resample == 3 else transform.resample == "bilinear"
    for name, image in generated_images().items():
        want = hf(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = preprocess_image(image, size, transform)
        assert got.dtype == np.float32 and got.shape == (size, size, 3)
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_siglip_transform_tf_path_within_the_tf_gap():
    """The tf.data path of the square resize: tf.image's antialiased bicubic against PIL's, the gap the
    OpenAI transform's tf path has (TF_EVAL_GAP, in OpenAI-normalised units) scaled to SigLIP's std
    (0.5 against OpenAI's smallest, 0.261: the same pixel gap is about half as large here)."""
    import tensorflow as tf

    from clip_jax.preprocess import (
        OPENAI_STD,
        SIGLIP_HF_PIL_TRANSFORM,
        TF_EVAL_GAP,
        preprocess_image,
        tf_eval_transform,
    )

    scale = min(OPENAI_STD) / 0.5
    image = np.asarray(generated_images()["rgb_smooth_portrait"])
    for size in (32, 224):
        got = tf_eval_transform(tf.constant(image), size, SIGLIP_HF_PIL_TRANSFORM).numpy()
        gap = np.abs(got - preprocess_image(image, size, SIGLIP_HF_PIL_TRANSFORM))
        assert got.shape == (size, size, 3)
        assert gap.max() < TF_EVAL_GAP["max_abs"] * scale and gap.mean() < TF_EVAL_GAP["mean_abs"] * scale


@pytest.mark.parametrize(
    "option, named",
    [
        ({"do_center_crop": True}, "do_center_crop"),
        ({"size": {"height": 8, "width": 8}}, "size"),
        ({"resample": 1}, "resample"),
    ],
)
def test_preprocessor_config_options_it_cannot_follow_are_named(tmp_path, option, named):
    from clip_jax.preprocess import read_hf_transform

    config = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 32, "width": 32}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config | option))
    with pytest.raises(ValueError, match=f"preprocessor_config.json: {named}="):
        read_hf_transform(tmp_path, 32)


def test_model_inputs_follow_the_checkpoint_and_the_family(siglip_dir):
    """A SigLIP directory gives its tokenizer and SigLIP's transform (no preprocessor_config.json there:
    the family's default); CLIP configs keep OpenAI's transform and CLIP's BPE; a SigLIP text tower
    without its vocabulary is refused, naming spiece.model, when an evaluation needs text."""
    from clip_jax.eval.zeroshot import ZeroShot
    from clip_jax.inputs import ModelInputs, model_inputs
    from clip_jax.preprocess import OPENAI_TRANSFORM, SIGLIP_TRANSFORM

    _, directory = siglip_dir
    inputs = model_inputs(TINY, directory)
    assert inputs.transform == SIGLIP_TRANSFORM and isinstance(inputs.tokenizer, SiglipTokenizer)
    assert model_inputs(TINY, directory / "model.safetensors").tokenizer is not None
    assert model_inputs(get_model_config("tiny"), directory) == ModelInputs(OPENAI_TRANSFORM, None)
    assert TINY.family == "siglip" and get_model_config("RN50").family == "clip"
    with pytest.raises(ValueError, match="spiece.model"):
        ZeroShot({"dataset": "clip_synthetic/tiny"}, CLIP(TINY))


@pytest.fixture(scope="module")
def siglip16_dir(tmp_path_factory):
    """A tiny SigLIP at 16 px (so the 32 px synthetic images are really resized) with everything a HF
    SigLIP directory has: config.json, model.safetensors, spiece.model, preprocessor_config.json."""
    directory = tmp_path_factory.mktemp("siglip16")
    torch.manual_seed(1)
    ref = randomize_every_parameter(transformers.SiglipModel(hf_siglip_config(image_size=16)), 1).eval()
    ref.save_pretrained(directory, safe_serialization=True)
    train_spiece(directory / "spiece.model")
    transformers.SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(directory)
    return ref, directory


def test_zeroshot_cli_on_a_siglip_checkpoint_equals_hf(siglip16_dir, tmp_path):
    """`python -m clip_jax.eval.zeroshot --weights SIGLIP_DIR` on clip_synthetic/tiny picks up the
    checkpoint's tokenizer and transform, and its top-1 is that of transformers' SiglipModel on HF's own
    preprocessing (SiglipImageProcessor) and tokenization (SiglipTokenizer) of the same images and
    prompts, with CLIP's classifier (templates averaged). The two float32 paths agree to 1e-4 relative
    in features (test_parity_with_hf_siglip_model), so a cosine moves by at most ~2e-4: images whose
    best and second class are within twice that may rank either way, and only they may differ."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from clip_jax.data import testing
    from clip_jax.data.builders import get_builder
    from clip_jax.eval import metadata, zeroshot

    ref, directory = siglip16_dir
    data_dir = testing.tiny_synthetic_data_dir()
    # HF's PIL transform (--transform), to compare with HF's processor; the default is big_vision's.
    argv = ["--weights", str(directory), "--dataset", "clip_synthetic/tiny", "--task", "shape"]
    argv += ["--transform", "siglip-hf-pil"]
    record = zeroshot.main(argv + ["--data-dir", data_dir, "--batch-size", "16"])
    metrics = record["metrics"]

    spec = metadata.get_dataset("clip_synthetic/tiny")
    label_key = metadata.label_feature(spec, "shape")
    classnames, templates = metadata.classnames_and_templates(spec.name, "shape")
    builder = get_builder("clip_synthetic/tiny", data_dir)
    raw = list(builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()}))
    images = [Image.open(io.BytesIO(ex["image"].numpy())) for ex in raw]
    labels = np.array([int(ex[label_key]) for ex in raw])
    pixels = transformers.SiglipImageProcessorPil.from_pretrained(directory)(images, return_tensors="pt")
    hf_tok = transformers.SiglipTokenizer(str(directory / "spiece.model"))
    prompts = [t.format(c) for c in classnames for t in templates]
    ids = hf_tok(prompts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = ref(input_ids=ids["input_ids"], pixel_values=pixels["pixel_values"])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    text = unit(out.text_embeds.numpy().astype(np.float64)).reshape(len(classnames), len(templates), -1)
    cos = unit(out.image_embeds.numpy().astype(np.float64)) @ unit(text.mean(axis=1)).T
    n = len(labels)
    assert metrics["num_examples"] == n == 32
    ranked = np.sort(cos, axis=1)[:, ::-1]
    rank = (cos > cos[np.arange(n), labels][:, None]).sum(axis=1)
    for k in (1, 5):
        near = (ranked[:, k - 1] - ranked[:, k]) < 4e-4  # the k-th and (k+1)-th classes may swap
        correct = int((rank < k).sum())
        assert abs(round(metrics[f"acc{k}"] * n) - correct) <= near.sum(), (k, metrics, correct, near.sum())
        assert near.sum() <= n // 4  # the comparison decides most images
        print(f"top-{k} {metrics[f'acc{k}']:.4f} (HF {correct}/{n}), {near.sum()} near ties")
    assert record["preprocess"]["transform"]["resize"] == "square"  # the record names SigLIP's transform


def test_retrieval_and_linear_probe_clis_on_a_siglip_checkpoint(siglip16_dir, tmp_path):
    """Retrieval tokenizes the captions with the checkpoint's tokenizer inside its tf.data pipeline (its
    recall equals retrieval_eval fed SigLIP's ids and transform by hand), and the linear probe runs on
    SigLIP's transform."""
    from clip_jax import load_pretrained
    from clip_jax.data import make_retrieval_dataset, testing
    from clip_jax.eval import linear_probe, retrieval
    from clip_jax.preprocess import read_hf_transform

    _, directory = siglip16_dir
    data_dir = testing.tiny_synthetic_data_dir()
    common = ["--weights", str(directory), "--data-dir", data_dir, "--batch-size", "16"]
    common += ["--transform", "siglip-hf-pil"]  # the preprocessor_config's transform, read by hand below
    record = retrieval.main(common + ["--dataset", "clip_synthetic/tiny"])
    model, params = load_pretrained(None, directory)
    tok = find_siglip_tokenizer(directory)
    ds = make_retrieval_dataset(
        "clip_synthetic/tiny",
        "test",
        batch_size=16,
        image_size=16,
        context_length=64,
        data_dir=data_dir,
        transform=read_hf_transform(directory, 16),
        tokenizer=tok,
    )
    batch = next(iter(ds))
    caption = batch["text"][0, 0]
    assert caption[-1] == tok.pad_id and tok.eos_id in caption  # SigLIP's ids, padded to 64
    want = retrieval.retrieval_eval(model, params, ds, tokenizer=tok)
    assert record["metrics"] == pytest.approx(want, rel=1e-12)
    probe = linear_probe.main(common + ["--dataset", "clip_synthetic/tiny", "--task", "color"])
    assert 0.0 <= probe["metrics"]["acc1"] <= 1.0
