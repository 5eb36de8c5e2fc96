"""The CLIP tokenizer must give exactly open_clip's (= OpenAI's) tokens, including on hostile text."""

import html
import random
import subprocess
import sys
from pathlib import Path

import ftfy
import numpy as np
import pytest

from clip_jax import tokenizer as tok_module
from clip_jax.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer, tokenize

REPO = Path(__file__).resolve().parents[1]
LONG_TEXT = " ".join(f"word{i} and some more, words; here!" for i in range(60))

# Hand-picked inputs for every cleaning step and quirk of OpenAI's pipeline.
SPECIAL_CORPUS = [
    "",
    "   ",
    "\t\n\r",
    "A Photo Of A DOG.",
    "MiXeD CaSe TeXt With CAPS and numbers 12345 3.14 1,000,000",
    "it's we're they've I'm you'll he'd IT'S WE'RE",
    # HTML entities, once and twice escaped, and with "<" (which switches off ftfy's unescaping).
    "Tom &amp; Jerry",
    "&lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &quot;double&quot; &#x2019;",
    "double escaped &amp;amp; and &amp;lt;tag&amp;gt; and &amp;amp;amp;",
    "a &lt; b but also < c &amp; d",
    "&nbsp;spaced&nbsp; P&EACUTE;REZ &checkmark; Tom&Jerry &notanentity; &",
    # Unicode: accents, combining marks, CJK, RTL, other scripts.
    "café naïve résumé Ångström Øresund façade",
    "e\u0301 combining acute, a\u0308 combining diaeresis",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇ text",
    "猫の写真 一只猫的照片 고양이 사진",
    "שלום עולם مرحبا بالعالم",
    "ภาพถ่ายของแมว фотография кошки φωτογραφία",
    "İstanbul ſ 'ſ 'ſt Kelvin K straße ΣΑΣ",
    # Emoji, skin tones, ZWJ sequences, flags, variation selectors.
    "a photo of a 🐶 and a 🐱!",
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 ❤️ ☺︎",
    # Mojibake and other things ftfy fixes.
    "âœ” No problems",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "sÃ³ voilÃ le travail Ã©tÃ©",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "“curly” ‘quotes’",
    "\x1b[36mterminal colors\x1b[0m",
    "control\x00chars\x07here \x85 c1",
    # Whitespace oddities.
    "tabs\tbetween\t\twords",
    "new\nlines\r\nand\rreturns",
    "non\xa0breaking\u00a0space and\u2009thin\u200bzero width\u2028line sep\u3000ideographic",
    "  leading and trailing  ",
    # Special-token strings in the text are the special tokens, as in OpenAI's tokenizer.
    "<start_of_text> inside <end_of_text> text",
    "<START_OF_TEXT> upper",
    "punctuation!!! ... ??? --- (brackets) [more] {braces} @#$%^*",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip")


def _theirs(open_clip, texts, context_length=77):
    return open_clip.tokenize(texts, context_length=context_length).numpy()


def test_imagenet_prompts_match_open_clip(open_clip):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    prompts = [template(name) for name in IMAGENET_CLASSNAMES for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(prompts) == 80_000
    ours = tokenize(prompts)
    assert ours.dtype == np.int32 and ours.shape == (80_000, 77)
    np.testing.assert_array_equal(ours, _theirs(open_clip, prompts))


@pytest.mark.parametrize("context_length", [77, 16, 3, 2, 1])
def test_special_corpus_matches_open_clip(open_clip, context_length):
    ours = Tokenizer()(SPECIAL_CORPUS, context_length)
    np.testing.assert_array_equal(ours, _theirs(open_clip, SPECIAL_CORPUS, context_length))


def test_matches_get_tokenizer_and_encode(open_clip):
    theirs = open_clip.get_tokenizer("ViT-B-32")
    ours = Tokenizer()
    np.testing.assert_array_equal(ours(SPECIAL_CORPUS), theirs(SPECIAL_CORPUS).numpy())
    for text in SPECIAL_CORPUS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == theirs.decode(ids), text


def _random_texts(rng: random.Random, alphabet: str, count: int) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_random_text_matches_open_clip(open_clip):
    rng = random.Random(0)
    ascii_alphabet = "".join(chr(c) for c in range(32, 127)) + "aeiou  &;#<\t\n\r\x0b\x0c\x1c\x1f\x00\x7f\x1b"
    unicode_alphabet = (
        ascii_alphabet
        + "\x85\xa0\xad\xe9\xc3\xa9\xe2\x80\x99\u0301\u0308\u200b\u200d\u2028\u3000\ufe0f\ufb01\uff21"
        + "ſKİ猫写真고שלםمرحبا🐶👍🏽🇺🇸"
        + "".join(chr(c) for c in range(0xC0, 0x100))
    )
    texts = _random_texts(rng, ascii_alphabet, 600) + _random_texts(rng, unicode_alphabet, 600)
    np.testing.assert_array_equal(Tokenizer()(texts), _theirs(open_clip, texts))


def test_ascii_shortcut_is_exact():
    # The shortcut skips ftfy and html.unescape on printable ASCII without "&": check they are identities.
    rng = random.Random(1)
    alphabet = "".join(chr(c) for c in range(32, 127) if chr(c) != "&")
    for text in _random_texts(rng, alphabet, 2000) + ["\\x1b[0m", "<b>", "#39;"]:
        assert not tok_module._needs_full_clean(text)
        assert ftfy.fix_text(text) == text and html.unescape(text) == text, text
    for text in ["a&b", "tab\there", "café", "\x1b[0m", "line\n"]:
        assert tok_module._needs_full_clean(text)


def test_layout_truncation_and_padding():
    out = tokenize(["", "a photo of a cat.", LONG_TEXT])
    assert out.dtype == np.int32 and out.shape == (3, 77)
    np.testing.assert_array_equal(out[0, :3], [SOT_TOKEN, EOT_TOKEN, 0])
    assert (out[0, 2:] == 0).all()
    n = int(np.argmax(out[1]))
    assert out[1, n] == EOT_TOKEN and (out[1, n + 1 :] == 0).all() and (out[1, 1:n] > 0).all()
    # Truncated: EOT is the last token and the ids before it are the first 75 of the text.
    assert out[2, -1] == EOT_TOKEN and out[2, 0] == SOT_TOKEN
    np.testing.assert_array_equal(out[2, 1:-1], Tokenizer().encode(LONG_TEXT)[:75])
    assert tokenize("one string").shape == (1, 77)
    assert tokenize([]).shape == (0, 77)
    assert tokenize(["x"], context_length=1).tolist() == [[EOT_TOKEN]]


def test_vocab_and_decode_roundtrip():
    tok = Tokenizer()
    assert tok.vocab_size == 49408
    assert tok.decoder[SOT_TOKEN] == "<start_of_text>" and tok.decoder[EOT_TOKEN] == "<end_of_text>"
    text = "A photo of a 猫 with ünïcödé, 👍🏽 &amp; numbers 42!"
    # Every regex match ends in "</w>", which decodes to a space.
    matches = tok_module._SPLIT_PATTERN.findall(tok_module.clean_text(text))
    assert tok.decode(tok.encode(text)) == "".join(m + " " for m in matches)
    assert tok.decode(np.array(tok.encode(text))) == "".join(m + " " for m in matches)


def test_caches_do_not_change_results(monkeypatch):
    texts = SPECIAL_CORPUS * 2
    cold = Tokenizer()(texts)
    tok = Tokenizer()
    np.testing.assert_array_equal(tok(texts), cold)
    np.testing.assert_array_equal(tok(texts), cold)  # warm
    tok.clear_cache()
    # A tiny cache limit exercises the wholesale eviction on every insertion.
    monkeypatch.setattr(tok_module, "_MAX_CACHE_ENTRIES", 3)
    np.testing.assert_array_equal(tok(texts), cold)
    assert len(tok._chunk_cache) <= 3 and len(tok._word_cache) <= 3


def test_no_torch_import():
    code = "import sys, clip_jax.tokenizer as t; t.tokenize('hi'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
