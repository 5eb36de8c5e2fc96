"""Regenerate clip_jax/assets/pretrained_tags.json from the installed open_clip's tag table.

    .venv/bin/python scripts/pretrained_tags.py

open_clip (a test extra) is read here, at development time only: the package ships the JSON. Each tag of
a model clip_jax names maps to the Hugging Face repo open_clip downloads it from; open_clip fetches
`open_clip_model.safetensors` from every one of them, so only the repo is kept.
"""

import json
from pathlib import Path

import open_clip.pretrained

from clip_jax.models import MODEL_CONFIGS

OUT = Path(__file__).resolve().parents[1] / "clip_jax" / "assets" / "pretrained_tags.json"


def table() -> dict:
    tags, quick_gelu = {}, []
    for model, entries in open_clip.pretrained._PRETRAINED.items():
        if model not in MODEL_CONFIGS:
            continue
        for tag, cfg in entries.items():
            hub = cfg["hf_hub"]
            if not hub.endswith("/"):  # a repo/filename entry: none today; the shipped file name would differ
                raise ValueError(
                    f"{model} {tag}: hf_hub {hub!r} names a file; extend clip_jax.weights.pretrained"
                )
            tags.setdefault(model, {})[tag] = hub.rstrip("/")
            if cfg.get("quick_gelu"):
                quick_gelu.append(f"{model}/{tag}")
    return {"tags": tags, "quick_gelu": quick_gelu}


if __name__ == "__main__":
    OUT.write_text(json.dumps(table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
