"""Weight import/export: format detection, config checks and their error messages, exact round trips.

Most tests build a checkpoint from a random 'tiny' clip_jax model with numpy only; those comparing with
open_clip itself skip when torch/open_clip are not installed.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from clip_jax import (
    CLIPConfig,
    export_open_clip,
    get_model_config,
    init_params,
    load_params,
    load_pretrained,
    save_params,
    stack_layers,
)
from clip_jax.convert import main as convert_main
from clip_jax.models.config import MODEL_CONFIGS, TextConfig
from clip_jax.weights import identify
from clip_jax.weights.hf import config_from_hf
from clip_jax.weights.infer import infer_config
from clip_jax.weights.load import param_shapes
from clip_jax.weights.open_clip import check_state_dict, expected_shapes, params_to_state_dict

TINY = get_model_config("tiny")


def tree_equal(a, b) -> bool:
    """Same structure, shapes, dtypes and bits."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    same = jax.tree.map(
        lambda x, y: x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), a, b
    )
    return all(jax.tree.leaves(same))


def random_tiny_params(seed: int = 0) -> dict:
    """Per-layer params of the tiny model, every leaf random (LayerNorm scales, biases, embeddings and
    the logit scale too, so that no mapping is tested on a constant). Drawn with numpy in the shapes of
    the model: compiling its init takes far longer than the tests that use them."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(TINY)
    )
    params["logit_scale"] = np.asarray(rng.uniform(np.log(10), np.log(100)), np.float32)
    return params


@pytest.fixture(scope="module")
def tiny_params():
    return random_tiny_params()


def randomize_torch_params(model, seed: int):
    """Give a torch CLIP (open_clip or HF) random LayerNorm scales and biases, linear and attention
    biases, class and positional embeddings and logit scale; returns the model.

    Their inits (ones, zeros, log(1/0.07)) would let a mapping that drops or swaps them pass a parity test.
    Scales are 1 + N(0, 0.2^2), biases and embeddings N(0, 0.1^2), the logit scale log U(10, 100).
    """
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    draw = lambda p, std, mean=0.0: mean + std * torch.randn(p.shape, generator=gen, dtype=p.dtype)
    touched = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                u = torch.rand(p.shape, generator=gen, dtype=p.dtype)
                p.copy_(torch.log(10 + 90 * u))
            elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm scales (the only 1-d weights)
                p.copy_(draw(p, 0.2, 1.0))
            elif p.ndim <= 1 or "position" in name:  # biases, class embedding; positional embeddings
                p.copy_(draw(p, 0.1))
            else:
                continue
            touched.add(name)
    assert any("bias" in n for n in touched) and any("logit_scale" in n for n in touched), touched
    return model


@pytest.fixture
def tiny_sd(tiny_params):
    """An open_clip-layout state dict of the tiny model (numpy, no torch)."""
    return params_to_state_dict(tiny_params)


def write(sd, path):
    save_file(sd, str(path))
    return path


def error_of(path, name="tiny", **kw) -> str:
    with pytest.raises(ValueError) as e:
        load_pretrained(name, path, **kw)
    return str(e.value)


def test_import_exact(tiny_params, tiny_sd, tmp_path):
    model, params = load_pretrained("tiny", write(tiny_sd, tmp_path / "m.safetensors"))
    assert model.cfg == TINY
    assert tree_equal(jax.tree.map(np.asarray, params), tiny_params)


def test_unknown_model_name(tiny_sd, tmp_path):
    assert "unknown model 'ViT-Z-99'" in error_of(write(tiny_sd, tmp_path / "m.safetensors"), "ViT-Z-99")


def test_wrong_model_name(tiny_sd, tmp_path):
    msg = error_of(write(tiny_sd, tmp_path / "m.safetensors"), "ViT-B-32")
    assert "model 'ViT-B-32'" in msg
    assert (
        "mis-shaped key visual.conv1.weight: expected shape (768, 3, 32, 32), found shape (64, 3, 8, 8)"
        in msg
    )
    # Counted in the header: 2 of ViT-B-32's 12 layers per tower are present (mis-shaped), 10 missing.
    assert "(61 mis-shaped, 240 missing, 0 unexpected keys)" in msg


def test_missing_key(tiny_sd, tmp_path):
    del tiny_sd["visual.ln_post.bias"]
    msg = error_of(write(tiny_sd, tmp_path / "m.safetensors"))
    assert "missing key visual.ln_post.bias: expected shape (64,), found nothing" in msg


def test_extra_key(tiny_sd, tmp_path):
    tiny_sd["visual.extra_token"] = np.zeros((3, 64), np.float32)
    msg = error_of(write(tiny_sd, tmp_path / "m.safetensors"))
    assert "unexpected key visual.extra_token: expected nothing, found shape (3, 64)" in msg


def test_misshaped_key(tiny_sd, tmp_path):
    tiny_sd["transformer.resblocks.1.mlp.c_fc.weight"] = np.zeros((128, 64), np.float32)
    msg = error_of(write(tiny_sd, tmp_path / "m.safetensors"))
    assert (
        "mis-shaped key transformer.resblocks.1.mlp.c_fc.weight: expected shape (256, 64), found shape (128, 64)"
        in msg
    )


def test_activation_must_be_given_for_open_clip_files(tiny_sd, tmp_path):
    path = write(tiny_sd, tmp_path / "m.safetensors")
    assert "quick_gelu" in error_of(path, None)
    model, _ = load_pretrained(None, path, quick_gelu=True)
    # The shapes are tiny's, so its config is taken whole: its 32-wide heads included.
    assert model.cfg == TINY.replace(quick_gelu=True)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_pretrained("tiny", tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match="no_ckpt"):
        load_params(tmp_path / "no_ckpt")


def test_torch_files_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"not really a pickle")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        load_pretrained("tiny", path)


def test_layouts_open_clip_saves(tiny_params, tiny_sd, tmp_path):
    """bf16 files, [1]-shaped logit_scale (nonscalar_logit_scale) and CustomTextCLIP's `text.` prefix."""
    sd = {("text." + k if not k.startswith(("visual.", "logit_")) else k): v for k, v in tiny_sd.items()}
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    _, params = load_pretrained("tiny", write(sd, tmp_path / "custom_text.safetensors"))
    assert tree_equal(jax.tree.map(np.asarray, params), tiny_params)
    bf16 = {k: v.astype(jnp.bfloat16) for k, v in tiny_sd.items()}
    _, params = load_pretrained("tiny", write(bf16, tmp_path / "bf16.safetensors"))
    expected = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(np.float32), tiny_params)
    assert tree_equal(jax.tree.map(np.asarray, params), expected)


def test_export_round_trip_is_bitwise(tiny_sd, tmp_path):
    src = write(tiny_sd, tmp_path / "src.safetensors")
    _, params = load_pretrained("tiny", src)
    out = export_open_clip(params, TINY, tmp_path / "out.safetensors")
    exported = load_file(str(out))
    assert sorted(exported) == sorted(tiny_sd)
    for k, v in tiny_sd.items():
        assert exported[k].dtype == v.dtype and np.array_equal(exported[k], v), k
    _, again = load_pretrained("tiny", out)
    assert tree_equal(again, params)


def test_orbax_params_round_trip_and_scan(tiny_params, tmp_path):
    directory = save_params(tmp_path / "ckpt", tiny_params, TINY)
    cfg, params = load_params(directory)
    assert cfg == TINY and tree_equal(jax.tree.map(np.asarray, params), tiny_params)
    with pytest.raises(FileExistsError, match="ckpt"):
        save_params(directory, tiny_params, TINY)
    # A scanned model gets the layers stacked, in the layout its own init has.
    _, params = load_pretrained(None, directory)
    scan_model, scan_params = load_pretrained("tiny", directory, scan=True)
    assert scan_model.scan and tree_equal(scan_params, stack_layers(params))
    expected = jax.eval_shape(lambda: init_params(scan_model, jax.random.key(0)))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), scan_params) == jax.tree.map(
        lambda a: (a.shape, a.dtype), expected
    )
    # A named config that disagrees with the saved one is refused, even where shapes cannot tell.
    assert "quick_gelu" in error_of(directory, "tiny-quickgelu")
    assert "visual.conv1.weight" in error_of(directory, "ViT-B-32")


def test_convert_cli(tiny_params, tiny_sd, tmp_path, capsys):
    src = write(tiny_sd, tmp_path / "src.safetensors")
    out = convert_main(["--input", str(src), "--model", "tiny", "--output", str(tmp_path / "orbax")])
    line = capsys.readouterr().out.strip()
    count = sum(a.size for a in jax.tree.leaves(tiny_params))
    assert line.endswith(f"model tiny, {count:,} params -> {out} (orbax)")
    cfg, params = load_params(out)
    assert cfg == TINY and tree_equal(jax.tree.map(np.asarray, params), tiny_params)
    st = convert_main(["--input", str(out), "--output", str(tmp_path / "back.safetensors")])
    assert "(safetensors)" in capsys.readouterr().out
    back = load_file(str(st))
    assert sorted(back) == sorted(tiny_sd) and all(np.array_equal(back[k], v) for k, v in tiny_sd.items())
    with pytest.raises(ValueError, match="quick_gelu"):
        convert_main(["--input", str(src), "--output", str(tmp_path / "x")])


def test_hf_config_json():
    cfg = config_from_hf(
        {
            "projection_dim": 768,
            "vision_config": {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "intermediate_size": 4096,
                "patch_size": 14,
            },
            "text_config": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
        }
    )
    assert cfg == get_model_config("ViT-L-14-quickgelu")  # HF's default hidden_act is quick_gelu


def tiny_open_clip_json() -> dict:
    """TINY as open_clip's model_configs json spells it."""
    v, t = TINY.vision, TINY.text
    return {
        "embed_dim": TINY.embed_dim,
        "vision_cfg": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width,
                       "layers": v.layers, "head_width": v.head_width},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers},
    }  # fmt: skip


def test_open_clip_config_json_beside_weights(tiny_params, tiny_sd, tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_open_clip_json()}))
    model, params = load_pretrained(None, write(tiny_sd, tmp_path / "open_clip_model.safetensors"))
    assert model.cfg == TINY
    assert tree_equal(jax.tree.map(np.asarray, params), tiny_params)


@pytest.mark.parametrize(
    "section, option, named",
    [
        ("text_cfg", {"pool_type": "eos", "eos_id": 2}, "pool_type"),  # MetaCLIP 2 worldwide
        ("text_cfg", {"hf_model_name": "roberta-base", "hf_pooler_type": "mean_pooler"}, "hf_model_name"),
        ("text_cfg", {"hf_tokenizer_name": "google/mt5-base"}, "hf_tokenizer_name"),
        ("text_cfg", {"embed_cls": True}, "embed_cls"),  # CoCa
        ("vision_cfg", {"timm_model_name": "vit_base_patch16_siglip_224"}, "timm_model_name"),
        ("vision_cfg", {"pool_type": "avg"}, "pool_type"),
        ("vision_cfg", {"new_option": 1}, "new_option"),
        (None, {"multimodal_cfg": {"layers": 12}}, "multimodal_cfg"),
    ],
)
def test_open_clip_configs_of_other_architectures_are_refused(section, option, named, tiny_sd, tmp_path):
    # A model clip_jax cannot build must fail loudly, not load into the plain CLIP towers.
    cfg = tiny_open_clip_json()
    (cfg[section] if section else cfg).update(option)
    with pytest.raises(ValueError, match=named):
        CLIPConfig.from_open_clip(cfg)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=named):
        load_pretrained(None, write(tiny_sd, tmp_path / "open_clip_model.safetensors"))


def test_open_clip_model_configs_translate_or_are_refused():
    # Every config open_clip ships: the plain ViT and ModifiedResNet ones translate to the config clip_jax's
    # registry holds under the same name; the rest (timm, HF, CoCa, ...) raise a ValueError.
    open_clip = pytest.importorskip("open_clip")
    translated = []
    for name in open_clip.list_models():
        try:
            cfg = CLIPConfig.from_open_clip(open_clip.get_model_config(name))
        except ValueError:
            continue
        translated.append(name)
        if name == "ViT-SO400M-14-SigLIP-378":
            continue  # the shapes of -384 (a 27x27 grid both): only -384 is named, so shapes name one model
        # Every one is named in clip_jax (infer_config matches shapes against the named configs).
        assert MODEL_CONFIGS.get(name) == cfg, name
    assert {"ViT-B-32", "ViT-B-16-quickgelu", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14", "RN50"} <= set(
        translated
    )
    # SigLIP's timm-trunk configs translate too (tests/test_siglip_formats.py); other timm towers do not.
    assert {"ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP2"} <= set(translated)
    refused = {"coca_ViT-B-32", "roberta-ViT-B-32", "ViT-H-14-worldwide", "ViT-SO400M-16-SigLIP-i18n-256"}
    assert not refused & set(translated)  # the last: a SigLIP text tower without head (proj_type none)


def _meta_open_clip_state_dict(name: str) -> dict:
    """open_clip's own state dict for a named config, on torch's meta device (shapes only, no weights)."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    with torch.device("meta"):
        return open_clip.CLIP(**open_clip.get_model_config(name)).state_dict()


def test_config_inferred_from_shapes_equals_open_clip_for_every_supported_config():
    """Shapes of each open_clip model clip_jax builds give exactly its config, heads included.

    The heads leave no trace in the shapes; the former 64-wide guess gave ViT-H-14's image tower 20 heads
    instead of 16 (ViT-g-14 22, ViT-bigG-14 26, ViT-e-14 28, all 16), loading without error into a model
    that computes other features. Shapes come from open_clip itself, built on the meta device (no weights).
    """
    open_clip = pytest.importorskip("open_clip")
    checked = []
    for name in open_clip.list_models():
        try:
            want = CLIPConfig.from_open_clip(open_clip.get_model_config(name))
        except ValueError:
            continue
        if want.family == "siglip":
            continue  # timm-trunk models, not open_clip.CLIP: tests/test_siglip_formats.py
        sd = _meta_open_clip_state_dict(name)
        assert infer_config(sd, quick_gelu=want.quick_gelu) == want, name
        checked.append(name)
    assert {"ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-e-14", "ViT-B-32-quickgelu"} <= set(checked)
    h = infer_config(_meta_open_clip_state_dict("ViT-H-14"), quick_gelu=False)
    assert (h.vision.heads, h.text.heads) == (16, 16)


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-g-14"])
def test_inferred_config_builds_open_clips_exact_keys_and_shapes(name):
    """The inferred config's parameter tree has open_clip's keys and shapes (80- and 88-wide heads)."""
    sd = _meta_open_clip_state_dict(name)
    cfg = infer_config(sd, quick_gelu=False)
    check_state_dict(sd, param_shapes(cfg), f"model {name!r}")
    assert expected_shapes(param_shapes(cfg)) == {k: tuple(v.shape) for k, v in sd.items()}


def test_shapes_of_no_named_config_ask_for_the_model_name(tiny_sd, tmp_path):
    # One layer fewer per tower: no named config has these shapes, and 64-wide towers could have 1, 2 or
    # 4 heads, so nothing is guessed.
    sd = {k: v for k, v in tiny_sd.items() if ".resblocks.1." not in k}
    msg = error_of(write(sd, tmp_path / "m.safetensors"), None, quick_gelu=False)
    assert "vision.layers 1" in msg and "match no named model" in msg and "--model" in msg
    assert "open_clip_config.json" in msg


def test_shapes_shared_by_named_configs_with_other_heads_are_ambiguous(tiny_sd, monkeypatch):
    monkeypatch.setitem(
        MODEL_CONFIGS, "tiny-4-heads", TINY.replace(text=TextConfig(width=64, heads=4, layers=2))
    )
    with pytest.raises(
        ValueError, match="different heads .*tiny-4-heads: 2 vision and 4 text heads.*--model"
    ):
        infer_config(tiny_sd, quick_gelu=False)


def test_hf_file_errors_name_file_keys(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)
    config = transformers.CLIPConfig(
        text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=32
    )
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["vision_model.post_layernorm.weight"] = np.zeros(65, np.float32)
    write(sd, tmp_path / "model.safetensors")
    msg = error_of(tmp_path, None)
    assert "visual.ln_post.weight (file key vision_model.post_layernorm.weight): expected shape (64,)" in msg
    del sd["vision_model.encoder.layers.0.self_attn.k_proj.weight"]
    write(sd, tmp_path / "model.safetensors")
    assert "vision_model.encoder.layers.0.self_attn.k_proj.weight" in error_of(tmp_path, None)


def test_open_clip_accepts_export(tmp_path):
    """open_clip loads the exported file strictly and computes the features clip_jax computes."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    skimage_data = pytest.importorskip("skimage.data")
    from clip_jax.preprocess import preprocess_image
    from clip_jax.tokenizer import tokenize

    def make(seed):
        torch.manual_seed(seed)
        model = open_clip.CLIP(
            64,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        )
        return randomize_torch_params(model, seed).eval()

    ref = make(0)
    torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model, params = load_pretrained("tiny", tmp_path / "open_clip_pytorch_model.bin")
    out = export_open_clip(params, model.cfg, tmp_path / "export" / "model.safetensors")
    fresh = make(1)
    open_clip.load_checkpoint(fresh, str(out), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    images = np.stack(
        [preprocess_image(skimage_data.astronaut(), 32), preprocess_image(skimage_data.coffee(), 32)]
    )
    tokens = tokenize(["an astronaut", "a cup of coffee", "a cat"])
    img, txt, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(images), jnp.asarray(tokens))
    with torch.no_grad():
        ref_img = fresh.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True).numpy()
        ref_txt = fresh.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    np.testing.assert_allclose(np.asarray(img), ref_img, atol=1e-5 * np.abs(ref_img).max())
    np.testing.assert_allclose(np.asarray(txt), ref_txt, atol=1e-5 * np.abs(ref_txt).max())


def torchscript_of(state_dict: dict, path):
    """Save a TorchScript archive whose state dict is `state_dict`: a scripted tree of bare modules holding
    the tensors (int ones as buffers, like the entries OpenAI's archives carry). No forward is needed."""
    torch = pytest.importorskip("torch")
    root = torch.nn.Module()
    for key, value in state_dict.items():
        *mods, leaf = key.split(".")
        module = root
        for m in mods:
            if not hasattr(module, m):
                module.add_module(m, torch.nn.Module())
            module = getattr(module, m)
        if value.dtype.is_floating_point:
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def with_openai_extras(state_dict: dict, input_resolution: int, context_length=77, vocab_size=49408) -> dict:
    torch = pytest.importorskip("torch")
    extras = dict(input_resolution=input_resolution, context_length=context_length, vocab_size=vocab_size)
    return {**state_dict, **{k: torch.tensor(v) for k, v in extras.items()}}


def test_openai_models_are_open_clips_openai_models():
    open_clip = pytest.importorskip("open_clip")
    openai = {name for name, tag in open_clip.list_pretrained() if tag == "openai"}
    # open_clip lists each under its plain and its -quickgelu name (the activation OpenAI trained with).
    assert set(identify.OPENAI_MODELS) == {n for n in openai if n.endswith("-quickgelu")}
    assert {n.removesuffix("-quickgelu") for n in openai} == {
        n.removesuffix("-quickgelu") for n in identify.OPENAI_MODELS
    }


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_pretrained_tag_of_an_openai_torchscript_archive(tmp_path):
    """ViT-B/32's keys and shapes (fp16, as OpenAI released them) with OpenAI's int entries: 'openai'."""
    torch = pytest.importorskip("torch")
    shapes = _meta_open_clip_state_dict("ViT-B-32-quickgelu")
    sd = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()}
    path = torchscript_of(with_openai_extras(sd, 224), tmp_path / "ViT-B-32.pt")
    assert identify.openai_model_name(path) == "ViT-B-32-quickgelu"
    assert identify.pretrained_tag(path) == "openai"
    # The same weights as a torch.save file are not OpenAI's release: tagged by their name.
    torch.save(sd, tmp_path / "ViT-B-32-resaved.bin")
    assert identify.pretrained_tag(tmp_path / "ViT-B-32-resaved.bin") == "ViT-B-32-resaved"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_pretrained_tag_of_other_torchscript_archives(tiny_sd, tmp_path, monkeypatch):
    """Tagged by file stem: other modules, and CLIP exports that are no OpenAI model or lack its entries.

    The variants are of the tiny model, standing in for OpenAI's configs (ViT-B/32 above is the real one).
    """
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in tiny_sd.items()}
    traced = torch.jit.trace(
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)), torch.ones(2, 4)
    )
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(tmp_path / "scripted.pt"))
    torchscript_of(with_openai_extras(sd, 32), tmp_path / "tiny-export.pt")
    for name in ("traced", "scripted", "tiny-export"):
        assert identify.pretrained_tag(tmp_path / f"{name}.pt") == name
    assert identify.pretrained_tag(tmp_path) == tmp_path.stem  # a folder

    monkeypatch.setattr(identify, "OPENAI_MODELS", ("tiny-quickgelu",))
    assert identify.pretrained_tag(tmp_path / "tiny-export.pt") == "openai"  # the stand-in is recognised
    extra = dict(sd, **{"visual.extra_token": torch.zeros(3, 64)})
    variants = {
        "no-extras": sd,
        "wrong-resolution": with_openai_extras(sd, 224),
        "wrong-vocab": with_openai_extras(sd, 32, vocab_size=49407),
        "extra-key": with_openai_extras(extra, 32),
        "missing-key": with_openai_extras({k: v for k, v in sd.items() if k != "ln_final.bias"}, 32),
        "misshaped-key": with_openai_extras(dict(sd, **{"ln_final.bias": torch.zeros(65)}), 32),
        "scalar-projection": with_openai_extras(dict(sd, text_projection=torch.zeros(())), 32),
    }
    for name, variant in variants.items():
        assert identify.pretrained_tag(torchscript_of(variant, tmp_path / f"{name}.pt")) == name, name


def test_export_writes_its_config_only_where_it_describes_no_other_file(tiny_params, tmp_path):
    """open_clip_config.json applies to every weights file of its folder: export writes it into a folder
    of its own, and never beside other weights or over another model's config."""
    alone = export_open_clip(tiny_params, TINY, tmp_path / "alone" / "model.safetensors")
    cfg = json.loads((alone.parent / "open_clip_config.json").read_text())["model_cfg"]
    assert CLIPConfig.from_open_clip(cfg) == TINY
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "other.bin").write_bytes(b"x")
    with pytest.warns(UserWarning, match="other weights files"):
        export_open_clip(tiny_params, TINY, tmp_path / "shared" / "model.safetensors")
    assert not (tmp_path / "shared" / "open_clip_config.json").exists()
    theirs = {"model_cfg": {"embed_dim": 1}}
    (alone.parent / "open_clip_config.json").write_text(json.dumps(theirs))
    (alone.parent / "model.safetensors").unlink()
    with pytest.warns(UserWarning, match="describes another model"):
        export_open_clip(tiny_params, TINY, alone)
    assert json.loads((alone.parent / "open_clip_config.json").read_text()) == theirs
