"""The webdataset format: tar shards of samples grouped by key, read with Python's `tarfile`.

A shard is an uncompressed tar whose consecutive members with the same key form one sample: `000123.jpg`,
`000123.txt` and `000123.json` are sample "000123" with fields "jpg", "txt" and "json". The key is the
member's path up to the first dot of its file name and the field the rest, lowercased, exactly as the
`webdataset` package (and so open_clip) splits names. img2dataset writes LAION, DataComp and CC12M this way.

This module knows the format only: `iter_samples` turns an open shard into (key, fields) and raises on any
damage, including the kinds `tarfile` passes over in silence; `KeySet` and `JsonFilter` select samples.
The tf.data source that streams shards into the training iterator is `image_text.WebdatasetSource`, and
`write_webdataset` writes shards.
"""

from __future__ import annotations

import io
import json
import operator
import re
import tarfile
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import IO, Any

import numpy as np

# webdataset.tariterators.base_plus_ext: (key, field) of a member name; names without a dot are not fields.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: "__index__" and the like are not samples
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks end every tar that was written to its end


class DamagedShardError(tarfile.ReadError):
    """A shard's tar data stops or breaks before its end-of-archive marker."""


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lowercased field) of a tar member name as webdataset splits it, or None if it is no field
    (no dot in its file name, or webdataset's "__meta__" names)."""
    if _META_NAME.match(name):
        return None
    match = _MEMBER_NAME.match(name)
    if not match:
        return None
    return match.group(1), match.group(2).lower()


def iter_samples(
    fileobj: IO[bytes], fields: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) for each sample of an uncompressed tar, reading only `fields` (None: all).

    Where the data is damaged it yields what was read in full before (the sample in progress with its
    complete members, if any: one cut short may lack its image or caption), then raises
    `tarfile.ReadError` (or the file's own I/O error). Besides the errors `tarfile` raises (a member's data
    cut short, an unreadable first header), this catches the ends it takes for a normal end of archive: a
    file cut at a member boundary and a corrupt header further in both stop its iteration silently, and
    are told from a real end by the two zero blocks that must follow the last member. Consecutive members
    of one key are one sample; a repeated field starts a new sample with that key (open_clip's reading,
    which LAION needs). `fileobj` must be seekable (local files, tf.io.gfile and fsspec files are).
    """
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        key, sample = None, {}
        try:
            while (member := tar.next()) is not None:
                tar.members = []  # tarfile keeps every header it read; a shard has ~10^4 (webdataset too)
                name = split_member_name(member.name) if member.isfile() else None
                if name is None:
                    continue
                member_key, field = name
                if member_key != key or field in sample:
                    if sample:
                        yield key, sample
                    key, sample = member_key, {}
                if fields is None or field in fields:
                    sample[field] = tar.extractfile(member).read()  # ReadError if the data is cut short
                else:
                    sample[field] = b""  # present, but not read
            fileobj.seek(tar.offset)
            end = fileobj.read(_END_OF_ARCHIVE)
            if len(end) < _END_OF_ARCHIVE or any(end):
                raise DamagedShardError(
                    f"the tar data stops at byte {tar.offset} without an end-of-archive marker (the file "
                    f"was cut short or a member header there is corrupt)"
                )
        except Exception:
            if sample:
                yield key, sample
            raise
        if sample:
            yield key, sample


class KeySet:
    """Sample keys to keep, sorted for binary search (a DataComp subset lists ~10^8 uids; a set would not
    fit in memory). From a text file (one key a line) or a DataComp subset file: a .npy array of uids as
    pairs of uint64 (dtype "u8,u8"), which match the 32 hex digits of the sample's .json "uid"."""

    def __init__(self, keys: np.ndarray, uids: bool) -> None:
        self.keys = np.sort(keys)
        self.uids = uids
        # What the keys name by default: a DataComp uid file lists .json uids; a text file, sample keys.
        self.default_field = "uid" if uids else "__key__"

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> KeySet:
        """The keys of a file's contents; `name` tells a .npy from a text file and names it in errors."""
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if array.dtype == np.dtype("u8,u8"):
                return cls(np.ascontiguousarray(array).reshape(-1), uids=True)
            if array.dtype.kind in "SU":
                return cls(np.char.encode(array.astype(str).reshape(-1), "utf-8"), uids=False)
            raise ValueError(
                f"keys file {name}: a .npy of DataComp uids (dtype u8,u8) or of strings expected, "
                f"not dtype {array.dtype}"
            )
        lines = {line.strip() for line in data.decode("utf-8").splitlines()} - {""}
        return cls(np.array(sorted(k.encode("utf-8") for k in lines), dtype=bytes), uids=False)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Any) -> bool:
        if self.uids:
            if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", key):
                return False
            query = np.array((int(key[:16], 16), int(key[16:], 16)), dtype=self.keys.dtype)
        else:
            query = str(key).encode("utf-8")
        index = int(np.searchsorted(self.keys, query))
        return index < len(self.keys) and self.keys[index] == query


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"\s*([^<>=!\s]+)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*")


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class JsonFilter:
    """Conditions on a sample's .json, all of which must hold, e.g. "width>=224,NSFW==UNLIKELY".

    Each is FIELD OP VALUE (OP one of == != >= <= > <; FIELD "a/b" for nested objects). A VALUE that reads
    as a number compares numerically; any other compares as text (== and != only), JSON true/false/null
    spelt as in JSON. A sample without the field, or whose field is not a number where one is compared,
    does not pass."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.conditions: list[tuple[list[str], str, float | str]] = []
        for part in spec.split(","):
            if not part.strip():
                continue
            match = _CONDITION.fullmatch(part)
            if not match:
                raise ValueError(
                    f"json_filter condition {part!r} is not FIELD OP VALUE with OP one of {list(_OPERATORS)}"
                )
            field, op, text = match.groups()
            try:
                value: float | str = float(text)
            except ValueError:
                if op not in ("==", "!="):
                    raise ValueError(
                        f"json_filter condition {part!r} orders by {text!r}, not a number"
                    ) from None
                value = text
            self.conditions.append((field.split("/"), op, value))

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def __call__(self, meta: Any) -> bool:
        for path, op, value in self.conditions:
            field = meta
            for part in path:
                if not isinstance(field, Mapping) or part not in field:
                    return False
                field = field[part]
            if isinstance(value, float):
                if isinstance(field, bool) or not isinstance(field, int | float | str):
                    return False
                try:
                    field = float(field)
                except ValueError:
                    return False
            else:
                field = _json_text(field)
            if not _OPERATORS[op](field, value):
                return False
        return True
