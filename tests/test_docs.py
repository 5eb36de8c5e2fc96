"""The docs hold: every ```python block of README.md and docs/*.md runs as written, the model list in
docs/models.md is MODEL_CONFIGS', and pretrained tags resolve to the cache as docs/models.md says.

A block runs in a fresh directory holding the files it names, made here from random models in the
formats the docs name: `ViT-B-32.pt` (an open_clip ViT-B-32 state dict saved with torch.save), a
`siglip-base-patch16-224/` Hugging Face SigLIP directory (a tiny SigLIP at 224 px with its own trained
sentencepiece model: the block reads its config from the directory, so the size does not matter) and
`cat.jpg`, and tiny transformers CLIP text encoders where a diffusers pipeline folder has them. Each
block runs alone, so it must import what it uses.
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    """(FILE:LINE, code) of every python block in the docs."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            out.append((f"{doc.relative_to(REPO)}:{line}", m.group(1)))
    return out


BLOCKS = python_blocks()


def make_openai_vit_b_32(path: Path) -> None:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    torch.save(model.state_dict(), path)


def make_siglip_dir(directory: Path) -> None:
    """A tiny SigLIP at 224 px saved as transformers saves SiglipModel, with a spiece.model."""
    import torch
    import transformers

    from clip_jax.models import get_model_config
    from clip_jax.siglip_tokenizer import train_sentencepiece
    from clip_jax.weights.hf import siglip_config_to_hf

    cfg = get_model_config("tiny-siglip")
    cfg = cfg.replace(
        vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "image_size": 224, "patch_size": 32})
    )
    torch.manual_seed(0)
    transformers.SiglipModel(transformers.SiglipConfig(**siglip_config_to_hf(cfg))).save_pretrained(
        directory, safe_serialization=True
    )
    rng = random.Random(0)
    words = "a photo of the cat dog bird car tree house red blue green big small on in with".split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    (directory / "spiece.model").write_bytes(train_sentencepiece(sentences, cfg.text.vocab_size))


def make_text_encoder(directory: Path, activation: str = "gelu", projection: bool = False) -> None:
    """A tiny transformers CLIPTextModel(WithProjection) directory, as a diffusers pipeline folder has."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=activation,
        projection_dim=32,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    cls(config).save_pretrained(directory)


# The files the docs' blocks name, and how to make each (only when a block names it).
FILES = {
    "stable-diffusion-2-1/text_encoder": make_text_encoder,
    "sdxl/text_encoder": lambda p: make_text_encoder(p, "quick_gelu"),
    "sdxl/text_encoder_2": lambda p: make_text_encoder(p, projection=True),
    "ViT-B-32.pt": make_openai_vit_b_32,
    "siglip-base-patch16-224/": lambda p: (p.mkdir(), make_siglip_dir(p)),
    "cat.jpg": lambda p: (
        __import__("PIL.Image")
        .Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
        .save(p)
    ),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The files of FILES, each made once on first request."""
    root = tmp_path_factory.mktemp("doc_files")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            path = root / name.rstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            FILES[name](path)
            cache[name] = path
        return cache[name]

    return get


def test_the_docs_have_python_blocks():
    assert len(BLOCKS) >= 4, BLOCKS  # the extraction itself works (README's four blocks)


@pytest.mark.parametrize("where, code", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_python_block_runs_as_written(where, code, made, tmp_path, monkeypatch):
    for name in FILES:
        if name in code:
            link = tmp_path / name.rstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(made(name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))  # `from configs.synthetic_tiny import ...`, as from the repo root
    namespace: dict = {"__name__": "__doc_block__"}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the docs' own code)
    if "probs" in namespace:  # the prediction blocks end in label probabilities
        probs = np.asarray(namespace["probs"])
        assert probs.shape == (1, 2) and np.all(np.isfinite(probs)) and np.all((probs >= 0) & (probs <= 1))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_list_is_generated_from_model_configs():
    from clip_jax.models import MODEL_CONFIGS

    doc = load_script("models_doc")
    text = doc.DOC.read_text()
    assert doc.render(text) == text, "docs/models.md is stale: run .venv/bin/python scripts/models_doc.py"
    listed = re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE)
    assert sorted(listed) == sorted(MODEL_CONFIGS)
    assert "docs/models.md" in (REPO / "README.md").read_text()
    assert "refused by name" not in text.split("ResNets")[0]  # the README's old drift: ResNets load


def test_pretrained_tag_resolves_to_the_cache_and_names_the_missing_file(tmp_path, monkeypatch):
    from clip_jax.weights.pretrained import CACHE_ENV, pretrained_tags, resolve_weights

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert "laion2b_s34b_b79k" in pretrained_tags("ViT-B-32") and "openai" not in pretrained_tags("ViT-B-32")
    assert "openai" in pretrained_tags("ViT-B-32-quickgelu") and "openai" in pretrained_tags("RN50-quickgelu")
    wanted = tmp_path / "ViT-B-32" / "laion2b_s34b_b79k" / "open_clip_model.safetensors"
    with pytest.raises(FileNotFoundError) as missing:
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    message = str(missing.value)
    assert str(wanted) in message and "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert "\n" not in message
    wanted.parent.mkdir(parents=True)
    wanted.write_bytes(b"")
    assert resolve_weights("ViT-B-32", "laion2b_s34b_b79k") == str(wanted)
    # OpenAI's own file also serves the openai tag; a QuickGELU tag on a GELU name says which name to use.
    openai = tmp_path / "RN50-quickgelu" / "openai" / "RN50.pt"
    openai.parent.mkdir(parents=True)
    openai.write_bytes(b"")
    assert resolve_weights("RN50-quickgelu", "openai") == str(openai)
    with pytest.raises(ValueError, match="use --model RN50-quickgelu"):
        resolve_weights("RN50", "openai")
    # Paths and unknown tags pass through untouched.
    assert resolve_weights("ViT-B-32", "my_weights.safetensors") == "my_weights.safetensors"
    assert resolve_weights(None, "openai") == "openai"


def test_pretrained_tag_through_load_pretrained(made, tmp_path, monkeypatch):
    """`load_pretrained(name, tag)` reads the cached file: OpenAI's ViT-B-32.pt placed where the tag says."""
    import clip_jax
    from clip_jax.weights.pretrained import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    folder = tmp_path / "ViT-B-32-quickgelu" / "openai"
    folder.mkdir(parents=True)
    (folder / "ViT-B-32.pt").symlink_to(made("ViT-B-32.pt"))
    model, params = clip_jax.load_pretrained("ViT-B-32-quickgelu", "openai")
    import jax

    assert model.cfg.quick_gelu and model.cfg.vision.width == 768
    assert sum(x.size for x in jax.tree.leaves(params)) == 151_277_313  # ViT-B/32's, as open_clip counts
