"""CLIP byte-level BPE tokenizer, token-for-token identical to OpenAI CLIP / open_clip.

The pipeline is OpenAI's: ftfy fix, HTML unescape (twice), whitespace collapse, lowercase, the CLIP regex
split, byte-level BPE with the merges of ``bpe_simple_vocab_16e6.txt.gz`` (shipped as package data), then
``[SOT] + ids + [EOT]`` truncated to the context length (EOT stays last) and padded with 0 (or with
``pad_token``: Stable Diffusion 1's tokenizer pads with EOT, see docs/text_conditioning.md).

Speed comes from three exact shortcuts rather than from changing the algorithm:
- ftfy and ``html.unescape`` provably leave printable ASCII without ``&`` unchanged, so such text (all of
  the ImageNet prompts) skips them;
- the regex split never matches across a space, so cleaned text is cut at spaces and every chunk's ids are
  cached; the BPE of every word is cached as well;
- the ``[N, context_length]`` array is filled in one vectorised numpy scatter.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

SOT_TOKEN = 49406
EOT_TOKEN = 49407
DEFAULT_CONTEXT_LENGTH = 77

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The vocab holds 256 byte symbols, 256 byte+</w> symbols, the merges and the two special tokens: 49408.
_NUM_MERGES = 49152 - 256 - 2
_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_END_OF_WORD = "</w>"
# OpenAI's split, special tokens first. IGNORECASE matters even on lowercased text: e.g. the long s
# "ſ" does not lowercase to "s" but case-folds to it, so "'ſ" is matched by the "'s" alternative.
_SPLIT_PATTERN = regex.compile(
    "|".join(_SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Caches are cleared wholesale when they reach this many entries, which bounds memory on endless caption
# streams while keeping the hot path a plain dict lookup.
_MAX_CACHE_ENTRIES = 1 << 20


def _byte_symbols() -> list[str]:
    """The 256 printable characters that stand for the bytes 0..255 in the BPE vocabulary.

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 bytes (controls, space,
    NBSP, soft hyphen) are given the code points 256, 257, ... in byte order, so that no symbol is whitespace.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols = []
    next_extra = 256
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(next_extra))
            next_extra += 1
    return symbols


def _needs_full_clean(text: str) -> bool:
    """Whether ftfy / html.unescape could change `text`.

    Printable ASCII without "&" is left unchanged by both: html.unescape only acts on "&"; ftfy's mojibake
    repair returns ASCII as is, its HTML step needs "&", and its other fixers act only on non-ASCII
    characters, control characters, "\\r" and escape sequences (which start with the control "\\x1b").
    """
    return not (text.isascii() and text.isprintable()) or "&" in text


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy, html unescape twice, collapse whitespace, lowercase."""
    if _needs_full_clean(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _clean_chunks(text: str) -> list[str]:
    """The space-separated pieces of ``clean_text(text)``.

    No match of the CLIP split pattern contains a space, so splitting the whole cleaned text equals
    splitting each piece and concatenating, which lets the pieces be cached.
    """
    if _needs_full_clean(text):
        cleaned = clean_text(text)
        return cleaned.split(" ") if cleaned else []
    # Printable ASCII: the only whitespace is " ", and lowercasing creates none.
    return text.lower().split()


class Tokenizer:
    """CLIP BPE tokenizer with per-chunk and per-word caches; ``__call__`` gives the model's int32 ids."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        symbols = _byte_symbols()
        # Maps a Latin-1 decoded byte string to BPE symbols in one str.translate call.
        self._byte_table = {byte: symbol for byte, symbol in enumerate(symbols)}
        self._symbol_to_byte = {symbol: byte for byte, symbol in enumerate(symbols)}

        merges = _read_merges()
        # The vocab lists the byte symbols by code point (printable bytes first), not in byte order.
        base = sorted(symbols)
        vocab = base + [s + _END_OF_WORD for s in base] + ["".join(m) for m in merges]
        vocab += list(_SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.vocab_size = len(vocab)
        self._merge_ranks = {merge: rank for rank, merge in enumerate(merges)}
        assert self.encoder["<start_of_text>"] == SOT_TOKEN and self.encoder["<end_of_text>"] == EOT_TOKEN

        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._chunk_cache: dict[str, tuple[int, ...]] = {}

    def clear_cache(self) -> None:
        """Forget cached chunks and words (benchmarks use this to time a cold tokenizer)."""
        self._word_cache.clear()
        self._chunk_cache.clear()

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one regex match (already mapped to byte symbols) after greedy lowest-rank merging."""
        parts = list(word[:-1])
        parts.append(word[-1] + _END_OF_WORD)
        ranks = self._merge_ranks
        while len(parts) > 1:
            best_rank, best = min(
                (ranks.get(pair, _NUM_MERGES), pair) for pair in zip(parts, parts[1:], strict=False)
            )
            if best_rank == _NUM_MERGES:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.encoder[p] for p in parts)

    def _encode_word(self, match: str) -> tuple[int, ...]:
        word = match.encode("utf-8").decode("latin-1").translate(self._byte_table)
        ids = self._word_cache.get(word)
        if ids is None:
            if word in _SPECIAL_TOKENS:
                # Literal "<start_of_text>" in the text is the special token, as in OpenAI's tokenizer.
                ids = (self.encoder[word],)
            else:
                ids = self._bpe(word)
            if len(self._word_cache) >= _MAX_CACHE_ENTRIES:
                self._word_cache.clear()
            self._word_cache[word] = ids
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = tuple(
            itertools.chain.from_iterable(self._encode_word(m) for m in _SPLIT_PATTERN.findall(chunk))
        )
        if len(self._chunk_cache) >= _MAX_CACHE_ENTRIES:
            self._chunk_cache.clear()
        self._chunk_cache[chunk] = ids
        return ids

    def _encode_into(self, text: str, out: list[int]) -> int:
        """Append the ids of `text` (no SOT/EOT) to `out`; return how many were appended."""
        # Bound methods hoisted out of the loop: this is the hot path for prompts seen word by word before.
        cached = self._chunk_cache.get
        extend = out.extend
        start = len(out)
        for chunk in _clean_chunks(text):
            ids = cached(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
            extend(ids)
        return len(out) - start

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` without SOT/EOT and without truncation."""
        out: list[int] = []
        self._encode_into(text, out)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; word ends become spaces and special tokens are spelled out."""
        symbols = "".join(self.decoder[int(i)] for i in ids)
        data = bytes(self._symbol_to_byte[c] for c in symbols)
        return data.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, pad_token: int = 0
    ) -> np.ndarray:
        """Token ids, int32 [N, context_length]: SOT, ids, EOT (kept last when truncating), then `pad_token`
        (0, as OpenAI and open_clip pad; HF tokenizers whose pad_token is "<|endoftext|>" pad with EOT)."""
        if isinstance(texts, str):
            texts = [texts]
        context_length = context_length or self.context_length
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")

        flat: list[int] = []
        lengths = np.fromiter((self._encode_into(t, flat) for t in texts), dtype=np.int64, count=len(texts))
        n = len(lengths)
        result = np.full((n, context_length), pad_token, dtype=np.int32)
        if n == 0:
            return result
        rows = np.arange(n)
        # EOT goes right after the ids, or into the last column when they do not fit; with a context of 1
        # it overwrites SOT, exactly as OpenAI's truncation does.
        eot_column = np.minimum(lengths + 1, context_length - 1)
        keep = eot_column - 1
        token_row = np.repeat(rows, lengths)
        starts = np.cumsum(lengths) - lengths
        token_pos = np.arange(len(flat)) - np.repeat(starts, lengths)
        kept = token_pos < keep[token_row]
        result[token_row[kept], token_pos[kept] + 1] = np.asarray(flat, dtype=np.int32)[kept]
        result[:, 0] = SOT_TOKEN
        result[rows, eot_column] = EOT_TOKEN
        return result


def _read_merges() -> list[tuple[str, str]]:
    """The BPE merges in priority order (the file's first line is a version header)."""
    resource = importlib.resources.files("clip_jax") / "assets" / _VOCAB_FILE
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : _NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, pad_token: int = 0
) -> np.ndarray:
    """Token ids of `texts` as int32 [N, context_length], the input of the CLIP text tower, padded with
    `pad_token` after the EOT (0 by default)."""
    return _default_tokenizer()(texts, context_length, pad_token)
