"""Regenerate the table of named models in docs/models.md from clip_jax.models.MODEL_CONFIGS.

    .venv/bin/python scripts/models_doc.py          # rewrite the block between the markers
    .venv/bin/python scripts/models_doc.py --check  # exit 1 if the file differs (tests/test_docs.py)

The table lives between `<!-- models:start -->` and `<!-- models:end -->`; the prose around it is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clip_jax.models import MODEL_CONFIGS
from clip_jax.weights.pretrained import pretrained_tags

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
START, END = "<!-- models:start -->", "<!-- models:end -->"


def _row(name: str) -> str:
    cfg = MODEL_CONFIGS[name]
    v, t = cfg.vision, cfg.text
    if isinstance(v.layers, tuple):
        tower = f"ResNet {'-'.join(map(str, v.layers))}, stem {v.width}"
    else:
        tower = f"ViT {v.layers} x {v.width}, patch {v.patch_size}"
    activation = "QuickGELU" if cfg.quick_gelu else ("GELU (tanh)" if cfg.gelu_approximate else "GELU")
    tags = ", ".join(f"`{tag}`" for tag in pretrained_tags(name)) or "-"
    return (
        f"| `{name}` | {cfg.family} | {v.image_size} | {tower} | {t.layers} x {t.width}, "
        f"{t.context_length} tokens | {cfg.embed_dim} | {activation} | {tags} |"
    )


def table() -> str:
    header = (
        f"{len(MODEL_CONFIGS)} named models.\n\n"
        "| name | family | image | image tower | text tower | embed | activation | pretrained tags |\n"
        "| --- | --- | ---: | --- | --- | ---: | --- | --- |"
    )
    return "\n".join([header, *(_row(name) for name in sorted(MODEL_CONFIGS, key=str.lower))])


def render(text: str) -> str:
    """`text` with the block between the markers replaced by the current table."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = render(current)
    if "--check" in argv:
        if current != wanted:
            print(f"{DOC} is out of date: run .venv/bin/python scripts/models_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
