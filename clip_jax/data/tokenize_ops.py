"""Sentencepiece tokenization inside the tf.data graph, id-for-id the Python tokenizer it is built from.

`in_graph_tokenizer(tokenizer, context_length)` gives a function of a 1-D string tensor -> int32
[N, context_length] for a tokenizer that has an in-graph form (today `clip_jax.siglip_tokenizer.
SiglipTokenizer`, HF's SiglipTokenizer ids, and `GemmaSiglipTokenizer`, SigLIP 2's), else None (the caller runs the Python tokenizer in a
tf.numpy_function). Python tokenization holds the GIL, so the parallel maps of a training pipeline wait
on each other; tensorflow-text's SentencepieceTokenizer (what big_vision uses) and tf.strings' regex ops
do not, and run on tf.data's threads.

The SigLIP steps, in HF's order (see siglip_tokenizer.py), on a caption without special tokens:
"▁" + text (with "▁" made a space), lowercase (ICU's full case mapping, which is Python's str.lower on
the corpus tested), ASCII punctuation removed, runs of Python's whitespace (`str.isspace`, a larger set
than RE2's `\\s`) made one space, stripped; encoded after the unk token, whose pieces are dropped; truncated
to context_length - 1, EOS appended, padded with the pad id. A caption that holds a special token as text
("</s>", "<unk>"; rare in real data) is split at it by HF's rules, which the graph does not reproduce:
such captions, and only those, go through the Python tokenizer, so every caption gets HF's ids.
SigLIP 2's Gemma steps are fewer: the text (lowercased, as big_vision trained it, unless the tokenizer
keeps case) is encoded as it is, truncated to context_length - 1, EOS, padded with <pad>.
"""

from __future__ import annotations

import logging
import string
import sys
from collections.abc import Callable

import tensorflow as tf

from clip_jax.siglip_tokenizer import GemmaSiglipTokenizer, SiglipTokenizer

_WORD_MARK = "\u2581"  # sentencepiece's "▁"

TfTokenizer = Callable[[tf.Tensor], tf.Tensor]


def _re2_class(chars: list[str]) -> str:
    """An RE2 character class of `chars`, every one escaped as \\x{hex} (ranges merged)."""
    codes = sorted(ord(c) for c in chars)
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    parts = [f"\\x{{{a:x}}}" + (f"-\\x{{{b:x}}}" if b > a else "") for a, b in ranges]
    return "[" + "".join(parts) + "]"


# Python's `re` \s and str.strip() use str.isspace (Unicode White_Space plus \x1c-\x1f); RE2's \s is
# ASCII only, so the class is spelled out.
PYTHON_WHITESPACE = _re2_class([chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()])
ASCII_PUNCTUATION = _re2_class(list(string.punctuation))


def _sentencepiece_op(tokenizer):
    """tensorflow-text's SentencepieceTokenizer of `tokenizer`'s model, or None without tensorflow-text."""
    try:
        import tensorflow_text
    except ImportError:
        return None
    return tensorflow_text.SentencepieceTokenizer(
        model=tokenizer.sp.serialized_model_proto(), out_type=tf.int32
    )


def _finish(ids: tf.RaggedTensor, context_length: int, eos: int, pad: int, always_eos: bool) -> tf.Tensor:
    """Ragged ids -> [N, context_length]: cut to context_length - 1, EOS (with always_eos=False only where
    the row does not already end with it, as HF's SiglipTokenizer), padded with `pad`."""
    ids = ids[:, : context_length - 1]
    lengths = ids.row_lengths()
    if always_eos:
        needs_eos = tf.ones_like(lengths)
    else:
        # The last id of each row; -1 (past the flat values) for an empty row.
        flat = tf.concat([ids.flat_values, [-1]], 0)
        last_index = tf.where(lengths > 0, ids.row_limits() - 1, tf.size(ids.flat_values, lengths.dtype))
        needs_eos = tf.cast(tf.gather(flat, last_index) != eos, lengths.dtype)
    eos_column = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(needs_eos)], tf.constant(eos, tf.int32)), needs_eos
    )
    ids = tf.concat([ids, eos_column], axis=1)
    return ids.to_tensor(default_value=pad, shape=[None, context_length])


def _with_python_for_specials(tokenizer, context_length: int, fast: TfTokenizer) -> TfTokenizer:
    """`fast` for captions without the tokenizer's special tokens written in them; the Python tokenizer
    (in a tf.numpy_function) for the few with, whose splitting rules the graph does not reproduce."""
    specials = sorted(tokenizer.special_ids, key=len, reverse=True)
    has_special = "(?s).*(" + "|".join(_re2_literal(t) for t in specials) + ").*"

    def python(text: tf.Tensor) -> tf.Tensor:
        tokens = tf.numpy_function(
            lambda c: tokenizer([s.decode("utf-8", errors="replace") for s in c], context_length),
            [text],
            tf.int32,
            stateful=False,
        )
        tokens.set_shape([None, context_length])
        return tokens

    def tokenize(captions: tf.Tensor) -> tf.Tensor:
        # Python decodes bytes with errors="replace"; the graph ops need valid UTF-8 alike.
        text = tf.strings.unicode_transcode(
            captions, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        ids = fast(text)
        special = tf.strings.regex_full_match(text, has_special)

        def with_python() -> tf.Tensor:
            rows = tf.where(special)
            return tf.tensor_scatter_nd_update(ids, rows, python(tf.gather_nd(text, rows)))

        return tf.cond(tf.reduce_any(special), with_python, lambda: ids)

    return tokenize


def siglip_in_graph(tokenizer: SiglipTokenizer, context_length: int) -> TfTokenizer | None:
    """HF SiglipTokenizer's ids (padding="max_length", truncation) of a 1-D string tensor, in the graph
    (None without tensorflow-text)."""
    sp = _sentencepiece_op(tokenizer)
    if sp is None:
        return None
    unk_prefix = tokenizer.unk_token
    unk_pieces = len(tokenizer.sp.encode(unk_prefix))
    eos, pad, lower = tokenizer.eos_id, tokenizer.pad_id, tokenizer.do_lower_case

    def fast(text: tf.Tensor) -> tf.Tensor:
        text = _WORD_MARK + tf.strings.regex_replace(text, _WORD_MARK, " ")
        if lower:
            text = tf.strings.lower(text, encoding="utf-8")
        text = tf.strings.regex_replace(text, ASCII_PUNCTUATION, "")
        text = tf.strings.regex_replace(text, PYTHON_WHITESPACE + "+", " ")
        text = tf.strings.regex_replace(text, "^ | $", "")
        ids = sp.tokenize(unk_prefix + text)
        # Drop the unk prefix's pieces (all of them kept if the text merged into fewer, as HF does).
        lengths = ids.row_lengths()
        start = tf.cast(lengths >= unk_pieces, lengths.dtype) * unk_pieces
        position = tf.ragged.range(lengths)
        ids = tf.ragged.boolean_mask(ids, position >= tf.expand_dims(start, 1))
        # EOS unless the row already ends with it (never without special tokens; kept for exactness).
        return _finish(ids, context_length, eos, pad, always_eos=False)

    return _with_python_for_specials(tokenizer, context_length, fast)


def gemma_in_graph(tokenizer: GemmaSiglipTokenizer, context_length: int) -> TfTokenizer | None:
    """SigLIP 2's Gemma ids (HF's GemmaTokenizer with SigLIP 2's settings: no BOS, EOS, <pad>) of a 1-D
    string tensor, in the graph: the text (lowercased if the tokenizer does) encoded as it is (None
    without tensorflow-text)."""
    sp = _sentencepiece_op(tokenizer)
    if sp is None:
        return None
    eos, pad, lower = tokenizer.eos_id, tokenizer.pad_id, tokenizer.lower

    def fast(text: tf.Tensor) -> tf.Tensor:
        if lower:
            text = tf.strings.lower(text, encoding="utf-8")
        return _finish(sp.tokenize(text), context_length, eos, pad, always_eos=True)

    return _with_python_for_specials(tokenizer, context_length, fast)


def _re2_literal(text: str) -> str:
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def in_graph_tokenizer(tokenizer: object, context_length: int) -> TfTokenizer | None:
    """The in-graph form of `tokenizer` (1-D string tensor -> int32 [N, context_length]), or None when it
    has none (CLIP's BPE and any other callable run in a tf.numpy_function; so do sentencepiece
    tokenizers where tensorflow-text is not installed, with a warning: the same ids, slower)."""
    build = {SiglipTokenizer: siglip_in_graph, GemmaSiglipTokenizer: gemma_in_graph}.get(type(tokenizer))
    if build is None:
        return None
    in_graph = build(tokenizer, context_length)
    if in_graph is None:
        logging.warning(
            "tensorflow-text is not installed: sentencepiece runs in Python inside tf.data (the same ids, "
            "slower); pip install --no-deps tensorflow-text==2.21.1"
        )
    return in_graph
