"""SigLIP's sentencepiece tokenizer, id-for-id HF transformers' `SiglipTokenizer` with
`padding="max_length", truncation=True` (how SigLIP was trained: every caption fills the context).

Built from a checkpoint's `spiece.model` with the `sentencepiece` package alone (no torch, no
transformers). The steps are HF's, in its order, since each one shows in the ids:
1. "▁" (sentencepiece's word marker) is put before the text, and any "▁" in it becomes a space;
2. the text is split at its special tokens (`</s>`, `<unk>`), which become their ids, and the whitespace
   next to each is stripped;
3. every other piece is canonicalised as big_vision's SigLIP evaluators do (lowercase, ASCII
   punctuation removed, whitespace runs collapsed to one space, stripped), then encoded after a
   `<unk>` prefix whose pieces are dropped (so that the text's first piece is encoded as a word start);
4. a leading lone "▁" piece before a special token is dropped;
5. the ids are truncated to context_length - 1, `</s>` is appended (unless the ids already end with it)
   and the row is padded to the context with the pad id (also `</s>` in SigLIP's files).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_FILE = "spiece.model"
DEFAULT_CONTEXT_LENGTH = 64
_WORD_MARK = "\u2581"  # sentencepiece's "▁"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# HF's SiglipTokenizer defaults; a tokenizer_config.json beside the model may set others.
_DEFAULTS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "do_lower_case": True}
# tokenizer_config.json keys read here, and those that cannot change the ids (or are HF's bookkeeping).
_READ = (*_DEFAULTS, "model_max_length", "additional_special_tokens")
_INERT = (
    "tokenizer_class",
    "processor_class",
    "clean_up_tokenization_spaces",
    "model_input_names",
    "sp_model_kwargs",
    "added_tokens_decoder",
    "legacy",
    "extra_special_tokens",
    "backend",
)


def canonicalize_text(text: str, lower: bool = True) -> str:
    """big_vision's (and HF's) SigLIP text canonicalisation: lowercase, drop ASCII punctuation,
    collapse whitespace runs to one space, strip."""
    if lower:
        text = text.lower()
    return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()


class SiglipTokenizer:
    """`SiglipTokenizer(spiece_model_path)(texts) -> int32 [N, context_length]`, as HF's ids."""

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        eos_token: str = _DEFAULTS["eos_token"],
        unk_token: str = _DEFAULTS["unk_token"],
        pad_token: str = _DEFAULTS["pad_token"],
        do_lower_case: bool = True,
    ) -> None:
        import sentencepiece

        self.context_length = context_length
        self.do_lower_case = do_lower_case
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.Load(str(vocab_file))
        self.vocab_size = self.sp.get_piece_size()
        self.special_ids = {t: self._special_id(t, vocab_file) for t in (eos_token, unk_token, pad_token)}
        self.eos_id, self.unk_id, self.pad_id = (
            self.special_ids[t] for t in (eos_token, unk_token, pad_token)
        )
        self.unk_token = unk_token
        # Longest first, so that no special token is cut by one it starts with.
        specials = sorted(self.special_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")
        self._unk_pieces = len(self.sp.encode(unk_token, out_type=str))

    def _special_id(self, token: str, vocab_file: str | os.PathLike) -> int:
        i = self.sp.piece_to_id(token)
        if self.sp.id_to_piece(i) != token:
            # HF would give it a new id past the vocabulary, which the model's embedding does not have.
            raise ValueError(
                f"{vocab_file}: special token {token!r} is not a piece of the sentencepiece model"
            )
        return i

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike, context_length: int | None = None
    ) -> SiglipTokenizer:
        """The tokenizer of a HF SigLIP model directory: its spiece.model and, if any, tokenizer_config.json
        (special tokens, lowercasing, the context length); options that would change the ids in ways this
        tokenizer does not follow raise a ValueError naming them."""
        directory = Path(directory)
        config: dict[str, Any] = {}
        path = directory / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            unknown = sorted(set(config) - set(_READ) - set(_INERT))
            if unknown:
                raise ValueError(
                    f"{path}: unsupported option(s) {unknown}; the SigLIP tokenizer reads {list(_READ)}"
                )
            if config.get("additional_special_tokens"):
                raise ValueError(f"{path}: additional_special_tokens are not supported")
        kw = {k: _token_text(config.get(k, v)) for k, v in _DEFAULTS.items()}
        if context_length is None:
            context_length = int(config.get("model_max_length", DEFAULT_CONTEXT_LENGTH))
        return cls(directory / VOCAB_FILE, context_length, **kw)

    def _encode_piece(self, text: str) -> list[str]:
        """HF's SiglipTokenizer._tokenize: canonicalise, encode after a `<unk>` prefix, drop its pieces."""
        text = canonicalize_text(text, self.do_lower_case)
        pieces = self.sp.encode(self.unk_token + text, out_type=str)
        return pieces[self._unk_pieces :] if len(pieces) >= self._unk_pieces else pieces

    def tokens(self, text: str) -> list[str]:
        """The pieces (special tokens as themselves) of `text`, before ids, EOS and padding."""
        parts = self._split.split(_WORD_MARK + text.replace(_WORD_MARK, " "))
        # Odd positions hold the special tokens; each strips the whitespace beside it (HF's AddedToken
        # lstrip/rstrip), in order, as HF's loop does.
        for i in range(1, len(parts), 2):
            if parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        out: list[str] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            out.extend([part] if i % 2 else self._encode_piece(part))
        if len(out) > 1 and out[0] == _WORD_MARK and out[1] in self.special_ids:
            out = out[1:]
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without EOS, truncation or padding."""
        return [
            self.special_ids[t] if t in self.special_ids else self.sp.piece_to_id(t)
            for t in self.tokens(text)
        ]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int32 [N, context_length]: ids truncated to leave room for EOS, EOS, then pad ids."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 1:
            raise ValueError(f"context_length must be positive, got {length}")
        out = np.full((len(texts), length), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: length - 1]
            if not ids or ids[-1] != self.eos_id:  # HF adds EOS unless the text already ends with it
                ids.append(self.eos_id)
            out[row, : len(ids)] = ids
        return out


def _token_text(value: Any) -> Any:
    """A tokenizer_config.json token: a string, or an AddedToken's dict with its `content`."""
    return value["content"] if isinstance(value, Mapping) else value


GEMMA_VOCAB_FILE = "tokenizer.model"
# Gemma's special pieces, which HF splits out of the text as added tokens (sentencepiece would spell them).
_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


class GemmaSiglipTokenizer:
    """SigLIP 2's tokenizer: Gemma's sentencepiece model (`tokenizer.model`, 256000 pieces), id-for-id
    HF's GemmaTokenizer as SigLIP 2's fixed-resolution checkpoints configure it (add_bos_token False,
    add_eos_token True, padding on the right) with `padding="max_length", truncation=True`: the text's
    pieces, cut to context_length - 1, then `<eos>`, then `<pad>` (id 0) to the context.

    Case: big_vision trained SigLIP 2 on lowercased text. HF's GemmaTokenizer keeps the case (its SigLIP 2
    docs ask the caller to lowercase), its later Siglip2Tokenizer lowercases; `lower` chooses, and
    `from_directory` follows the directory's tokenizer_config.json (lowercase unless it names
    GemmaTokenizer). Special pieces written in the text (`<eos>`, `<unk>`, ...) become their ids, as in HF.
    """

    def __init__(
        self, vocab_file: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH, lower: bool = True
    ) -> None:
        import sentencepiece

        self.context_length = context_length
        self.lower = lower
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.Load(str(vocab_file))
        self.vocab_size = self.sp.get_piece_size()
        self.special_ids = {
            t: self.sp.piece_to_id(t)
            for t in _GEMMA_SPECIALS
            if self.sp.id_to_piece(self.sp.piece_to_id(t)) == t
        }
        missing = [t for t in ("<pad>", "<eos>") if t not in self.special_ids]
        if missing:
            raise ValueError(
                f"{vocab_file}: {missing} are not pieces of the sentencepiece model (Gemma's are)"
            )
        self.pad_id, self.eos_id = self.special_ids["<pad>"], self.special_ids["<eos>"]
        specials = sorted(self.special_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike, context_length: int | None = None
    ) -> GemmaSiglipTokenizer:
        """The tokenizer of a HF SigLIP 2 directory: tokenizer.model, and tokenizer_config.json if any (which
        must keep Gemma's SigLIP 2 settings: no BOS, EOS added)."""
        directory = Path(directory)
        config: dict[str, Any] = {}
        path = directory / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            bad = {
                k: config[k]
                for k, ok in (("add_bos_token", False), ("add_eos_token", True))
                if config.get(k, ok) != ok
            }
            if bad:
                raise ValueError(
                    f"{path}: {bad} differ from SigLIP 2's (add_bos_token false, add_eos_token true)"
                )
        if context_length is None:
            context_length = int(config.get("model_max_length", DEFAULT_CONTEXT_LENGTH))
        lower = config.get("tokenizer_class", "Siglip2Tokenizer") != "GemmaTokenizer"
        return cls(directory / GEMMA_VOCAB_FILE, context_length, lower=lower)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without EOS, truncation or padding."""
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.sp.encode(part.lower() if self.lower else part))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int32 [N, context_length]: ids truncated to leave room for EOS, EOS, then pad ids."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 1:
            raise ValueError(f"context_length must be positive, got {length}")
        out = np.full((len(texts), length), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: length - 1] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out


def find_siglip_tokenizer(
    weights: str | os.PathLike, context_length: int | None = None
) -> SiglipTokenizer | GemmaSiglipTokenizer | None:
    """The SigLIP tokenizer beside a weights file or in a model directory (SigLIP's spiece.model, SigLIP 2's
    Gemma tokenizer.model), else None."""
    path = Path(weights)
    directory = path if path.is_dir() else path.parent
    if (directory / VOCAB_FILE).is_file():
        return SiglipTokenizer.from_directory(directory, context_length)
    if (directory / GEMMA_VOCAB_FILE).is_file():
        return GemmaSiglipTokenizer.from_directory(directory, context_length)
    return None


# Special ids and options of the two vocabularies, as SigLIP's spiece.model and SigLIP 2's Gemma
# tokenizer.model lay them out: what a model trained here must share with the released ones.
_SENTENCEPIECE_STYLES = {
    "siglip": dict(model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
    "gemma": dict(
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<mask>"],
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
    ),
}


def train_sentencepiece(sentences: Sequence[str], vocab_size: int, style: str = "siglip") -> bytes:
    """A sentencepiece model (the bytes of a .model file) trained on `sentences`, with the special ids of
    SigLIP's vocabulary (`style="siglip"`: unigram, <pad> 0, </s> 1, <unk> 2) or SigLIP 2's Gemma one
    (`"gemma"`: BPE with byte fallback, <pad> 0, <eos> 1, <bos> 2, <unk> 3). At most `vocab_size` pieces,
    so ids stay below a text tower's embedding; one thread, so the same corpus gives the same file."""
    import io

    import sentencepiece

    if style not in _SENTENCEPIECE_STYLES:
        raise ValueError(f"style={style!r}: one of {sorted(_SENTENCEPIECE_STYLES)}")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **_SENTENCEPIECE_STYLES[style],
    )
    return model.getvalue()
