"""Training SigLIP with its own tokenizer: the in-graph sentencepiece tokenizer against HF's, the
config fields that say where a tokenizer comes from, and the trainer from scratch, fine-tuning a HF
SiglipModel directory (both towers) and LiT-style with its image tower locked, all with the sigmoid loss.

The tokenizer reference is transformers' SiglipTokenizer on a sentencepiece model trained by the test
(test_siglip.train_spiece), fed a hard corpus: SigLIP's canonicalisation (case, ASCII punctuation, every
Unicode whitespace), special tokens written in the text, truncation, empty and blank captions, scripts
and case mappings beyond ASCII, invalid UTF-8 bytes, and a few thousand random strings of those.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from clip_jax import get_model_config
from clip_jax.data import default_data_config
from clip_jax.data.tf_ops import tf_tokenize
from clip_jax.data.tokenize_ops import in_graph_tokenizer
from clip_jax.siglip_tokenizer import SiglipTokenizer, train_sentencepiece
from clip_jax.train.config import default_config, validate_config

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from test_siglip import TEXTS, WORDS, hf_siglip_config, randomize_every_parameter, train_spiece  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HARD = [
    *TEXTS,
    "ΟΔΟΣ İstanbul Straße ǅ ﬁ ẞ",  # final sigma, dotted I, ß, titlecase digraph, ligature
    "a\u00a0b\u2003c\x1cd\x85e\u3000f\u200bg",  # whitespace that RE2's \s does not know (and one it is not)
    " ",
    "\t\n",
    "!!!",
    "...a...",
    "日本語のテキスト 한국어 עברית",
    "emoji 🐱\u200d👤 🇯🇵",
    "ＦＵＬＬＷＩＤＴＨ ａｂｃ",  # NFKC in sentencepiece's normaliser
    "<unk>",
    "</s>",
    "</s></s> <unk>a",
    "x<unk>",
    "<s>",
    "a" * 500,
    "\u2581\u2581",
    "a\u2581",
    "combining e\u0301 a\u0308",
]
_POOLS = [
    " \t\n\r\x0b\x0c\x1c\x1d\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000\u200b\ufeff",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…‘’“”",
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "ΑΒΓΔΣσςİıßẞǅǄﬁﬀÅÉÎÕÜàéîõüĲŉ",
    "日本語中文한국어ไทยعربيעברית",
    "🐱🐶\u200d👤🇯🇵\u0301\u0308\u2581",
]


def fuzz_corpus(count: int, seed: int = 1) -> list[str]:
    """Random strings from the pools above, and random word sequences up to past the context."""
    rng = random.Random(seed)
    chars = ["".join(rng.choice(rng.choice(_POOLS)) for _ in range(rng.randint(0, 80))) for _ in range(count)]
    words = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 90))) for _ in range(count // 4)]
    return chars + words


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    path = tmp_path_factory.mktemp("spiece") / "spiece.model"
    train_spiece(path)
    return path


@pytest.mark.parametrize("lower", [True, False])
def test_in_graph_tokenizer_equals_hf_siglip_tokenizer(spiece, lower):
    """tensorflow-text's sentencepiece and tf.strings' canonicalisation give HF's ids for every text, and
    the tf.data path (tf_tokenize in a parallel map, any batch shape) gives the same."""
    ours = SiglipTokenizer(spiece, do_lower_case=lower)
    hf = transformers.SiglipTokenizer(str(spiece), do_lower_case=lower)
    corpus = HARD + fuzz_corpus(1000)
    want = np.array(hf(corpus, padding="max_length", truncation=True, max_length=64)["input_ids"], np.int32)
    got = in_graph_tokenizer(ours, 64)(tf.constant(corpus)).numpy()
    assert got.dtype == np.int32 and got.shape == want.shape
    differ = [text for text, g, w in zip(corpus, got, want, strict=True) if not np.array_equal(g, w)]
    assert not differ, differ[:5]
    # Canonicalisation really runs in the graph: with lowercasing, case and punctuation do not matter.
    assert np.array_equal(got[0], ours(["a Photo of a CAT."])[0]) == lower

    captions = tf.reshape(tf.constant(HARD[:16]), [4, 2, 2])
    ds = tf.data.Dataset.from_tensor_slices(captions).map(
        lambda c: tf_tokenize(c, 64, ours), num_parallel_calls=2, deterministic=True
    )
    piped = np.stack(list(ds.as_numpy_iterator()))
    assert piped.shape == (4, 2, 2, 64)
    assert np.array_equal(piped.reshape(16, 64), want[:16])


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """A SigLIP 2-like tokenizer directory: a small BPE sentencepiece model with Gemma's settings (<pad> 0,
    <eos> 1, <bos> 2, <unk> 3, <mask> 4; byte fallback, digits split, no dummy prefix, whitespace kept,
    identity normaliser) and SigLIP 2's tokenizer_config.json (HF's GemmaTokenizer, no BOS, EOS)."""
    pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("gemma")
    rng = random.Random(0)
    sentences = [
        " ".join(rng.choice(WORDS + ["Café", "naïve"]) for _ in range(rng.randint(2, 10)))
        for _ in range(3000)
    ]
    (directory / "tokenizer.model").write_bytes(train_sentencepiece(sentences, 300, style="gemma"))
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True}
    config |= {"padding_side": "right", "model_max_length": 64}  # HF's GemmaTokenizer pads on the left
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("lower", [False, True])
def test_in_graph_gemma_tokenizer_equals_hf_gemma_tokenizer(gemma_dir, lower):
    """SigLIP 2's Gemma tokenizer in the graph: HF GemmaTokenizer's ids with the directory's settings
    (case kept), and lowercased (as big_vision trained SigLIP 2) the Python tokenizer's ids, which
    tests/test_siglip_formats.py holds to HF's ids of the lowercased text."""
    from clip_jax.siglip_tokenizer import GemmaSiglipTokenizer

    ours = GemmaSiglipTokenizer(gemma_dir / "tokenizer.model", lower=lower)
    corpus = HARD + ["a cat <eos> dog", "<bos> first", "x<unk>y <mask>", "A Photo 2024"] + fuzz_corpus(600)
    if lower:
        want = ours(corpus)
    else:
        hf = transformers.AutoTokenizer.from_pretrained(str(gemma_dir))
        want = np.array(hf(corpus, padding="max_length", truncation=True, max_length=64)["input_ids"])
    got = in_graph_tokenizer(ours, 64)(tf.constant(corpus)).numpy()
    differ = [text for text, g, w in zip(corpus, got, want, strict=True) if not np.array_equal(g, w)]
    assert not differ, differ[:5]
    assert np.array_equal(got, ours(corpus))


def test_invalid_utf8_is_replaced_as_python_decodes_it(spiece):
    ours = SiglipTokenizer(spiece)
    raw = [b"ok \xff\xfe bytes", b"\xc3\x28 x", b"a\xe2\x82", b"\xf0\x9f\x98"]
    got = in_graph_tokenizer(ours, 64)(tf.constant(raw)).numpy()
    assert np.array_equal(got, ours([r.decode("utf-8", errors="replace") for r in raw]))


def test_clip_bpe_has_no_in_graph_form():
    """CLIP's BPE stays in Python (tf.numpy_function): only sentencepiece tokenizers have a graph form."""
    from clip_jax.tokenizer import Tokenizer

    assert in_graph_tokenizer(Tokenizer(), 77) is None
    assert tf_tokenize(tf.constant(["a photo"]), 77).numpy()[0, 0] == 49406


# ----------------------------------------------------------------------------------------------------------
# Where the tokenizer comes from: config.tokenizer, config.init_from
# ----------------------------------------------------------------------------------------------------------


def siglip_config(**fields):
    c = default_config()
    c.model = "tiny-siglip"
    c.loss = "sigmoid"
    c.data = default_data_config()
    c.data.source = "synthetic"
    for k, v in fields.items():
        c[k] = v
    return c


def test_tokenizer_source_is_validated_naming_the_field(spiece, gemma_dir, tmp_path):
    with pytest.raises(ValueError, match=r"config\.tokenizer is empty: a siglip text tower"):
        validate_config(siglip_config())
    with pytest.raises(ValueError, match=r"config\.tokenizer='/nowhere/x.model' does not exist"):
        validate_config(siglip_config(tokenizer="/nowhere/x.model"))
    with pytest.raises(
        ValueError, match=r"config\.init_from='.*' holds no spiece\.model or tokenizer\.model"
    ):
        validate_config(siglip_config(init_from=str(tmp_path)))
    with pytest.raises(ValueError, match=r"config\.tokenizer=.*a clip text tower reads CLIP's BPE"):
        validate_config(siglip_config(model="tiny", loss="softmax", tokenizer=str(spiece)))
    assert validate_config(siglip_config(tokenizer=str(spiece))).family == "siglip"
    assert validate_config(siglip_config(tokenizer=str(spiece.parent))).family == "siglip"
    # The tokenizer each source gives: SigLIP's from a file or directory, SigLIP 2's Gemma one by its name.
    from clip_jax.inputs import train_inputs
    from clip_jax.siglip_tokenizer import GemmaSiglipTokenizer

    cfg = get_model_config("tiny-siglip")
    assert type(train_inputs(cfg, str(spiece)).tokenizer) is SiglipTokenizer
    assert type(train_inputs(cfg, "", str(spiece.parent)).tokenizer) is SiglipTokenizer
    assert type(train_inputs(cfg, str(gemma_dir)).tokenizer) is GemmaSiglipTokenizer
    assert type(train_inputs(cfg, str(gemma_dir / "tokenizer.model")).tokenizer) is GemmaSiglipTokenizer
    assert train_inputs(get_model_config("tiny")).tokenizer is None  # CLIP's BPE
    # A training run as a weights source (eval CLIs, predict) gives the tokenizer its config.json names.
    from clip_jax.inputs import model_inputs

    run = tmp_path / "run"
    (run / "checkpoints" / "5" / "state").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "tiny-siglip", "tokenizer": str(spiece)}))
    assert type(model_inputs(cfg, run).tokenizer) is SiglipTokenizer
    assert type(model_inputs(cfg, run / "checkpoints" / "5").tokenizer) is SiglipTokenizer
    # Noise batches without evaluations read no text: no tokenizer needed (benchmarks of the step).
    random_data = siglip_config()
    random_data.data = {"source": "random"}
    validate_config(random_data)


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------


def load_config_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir():
    from clip_jax.data import testing

    return testing.tiny_synthetic_data_dir()


def tiny_run_config(config, data_dir, steps: int):
    config.data.name = "tiny"
    config.data.data_dir = data_dir
    config.data.shuffle_buffer = 64
    config.batch_size = 32
    config.total_steps = steps
    config.warmup_steps = 1
    config.log_every = 1
    config.checkpoint_every = 1000
    config.prefetch = 0
    config.evals = {}
    return config


def metrics(workdir) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_tiny_siglip_config_feeds_sentencepiece_ids_and_learns(data_dir, tmp_path):
    """configs/synthetic_tiny_siglip.py's pipeline feeds its shipped tokenizer's ids (each row a caption
    of the dataset, canonicalised, EOS, padded), and a few steps of the sigmoid loss lower the loss."""
    from clip_jax.data.synthetic import generate_example
    from clip_jax.train.loop import make_train_data, train

    module = load_config_module("synthetic_tiny_siglip")
    config = tiny_run_config(module.get_config("width=64,layers=1,lr=3e-3"), data_dir, steps=8)
    model_cfg = validate_config(config)
    tok = SiglipTokenizer(module.TOKENIZER, model_cfg.text.context_length)
    batch = next(iter(make_train_data(config, model_cfg)))
    text = batch["text"]
    assert text.dtype == np.int32 and text.shape == (32, module.CONTEXT_LENGTH)
    assert (text < module.VOCAB_SIZE).all() and not (text == tok.unk_id).any()
    tiny_split = [c for i in range(128) for c in generate_example("train", i, 8)["captions"]]
    captions = {tuple(row) for row in tok(tiny_split)}
    assert all(tuple(row) in captions for row in text)  # the tiny split's captions, tokenized by tok

    train(config, str(tmp_path))
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 8 and np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.fixture(scope="module")
def hf_siglip_dir(tmp_path_factory):
    """A tiny random HF SiglipModel directory (config.json, model.safetensors, spiece.model)."""
    directory = tmp_path_factory.mktemp("hf_siglip")
    torch.manual_seed(0)
    ref = randomize_every_parameter(transformers.SiglipModel(hf_siglip_config()), 0).eval()
    ref.save_pretrained(directory, safe_serialization=True)
    train_spiece(directory / "spiece.model")
    return directory


def leaves(params) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in flat}


@pytest.mark.parametrize("lit", [False, True], ids=["both_towers", "lit"])
def test_init_from_hf_siglip_finetunes_with_its_tokenizer_and_logit_bias(
    hf_siglip_dir, data_dir, tmp_path, lit
):
    """config.init_from a HF SiglipModel directory: the tokenizer is the directory's (config.tokenizer
    empty), the first step's loss is the sigmoid loss (logit bias included) of the loaded model on the
    first batch, and both towers and the bias train; LiT-style, the loaded image tower stays bit-equal
    and the text tower starts fresh."""
    from clip_jax import load_pretrained
    from clip_jax.train.loop import make_train_data, train
    from clip_jax.train.losses import sigmoid_loss

    config = tiny_run_config(siglip_config(init_from=str(hf_siglip_dir)), data_dir, steps=3)
    config.warmup_steps = 0
    config.lr = 1e-3
    if lit:
        config.freeze = ("^visual/",)
        config.init_from_only = ("^visual/",)
    model_cfg = validate_config(config)
    model, loaded = load_pretrained(None, hf_siglip_dir)
    assert model.cfg == model_cfg == get_model_config("tiny-siglip")
    batch = next(iter(make_train_data(config, model_cfg)))
    hf_tok = transformers.SiglipTokenizer(str(hf_siglip_dir / "spiece.model"))
    assert batch["text"][0, -1] == hf_tok.pad_token_id and hf_tok.eos_token_id in batch["text"][0]

    state = train(config, str(tmp_path))
    first, final = metrics(tmp_path)[0], leaves(state.params)
    before = leaves(loaded)
    visual = [k for k in before if k.startswith("visual/")]
    text = [k for k in before if k.startswith("text/")]
    assert visual and text
    if not lit:
        img, txt, scale, bias = model.apply({"params": loaded}, batch["image"], batch["text"])
        assert first["loss"] == pytest.approx(float(sigmoid_loss(img, txt, scale, bias)), rel=1e-4)
        assert not [k for k in visual + text if np.array_equal(final[k], before[k])]
    else:
        assert all(np.array_equal(final[k], before[k]) for k in visual)  # locked, as loaded
        assert not [k for k in text if np.array_equal(final[k], before[k])]
    assert final["logit_bias"] != before["logit_bias"]
