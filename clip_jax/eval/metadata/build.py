"""Regenerate the JSON class-name / template / WNID files in this folder from their offline sources.

Run once by a maintainer (`python -m clip_jax.eval.metadata.build --objectnet-mappings DIR`); the outputs
are committed. Sources (documented in SOURCES.md):
  - open_clip.zero_shot_metadata: OpenAI's curated ImageNet class names, the 80 templates, the 7-template
    subset (both from OpenAI's Prompt_Engineering_for_ImageNet notebook).
  - timm/data/_info: the ImageNet-1k WNID order (identical to TFDS imagenet2012 labels.txt) and the
    200-class WNID lists of ImageNet-R and ImageNet-A.
  - ObjectNet's own `mappings/` folder (objectnet_to_imagenet_1k.json, folder_to_objectnet_label.json and
    the index->label list; the same files are redistributed in modestyachts/imagenet-testbed).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).parent


def _template_strings(templates) -> list[str]:
    # open_clip stores templates as lambdas; calling one with "{}" gives back the format string.
    return [t("{}") if callable(t) else str(t) for t in templates]


def _timm_info(name: str) -> list[str]:
    import timm

    path = Path(timm.__file__).parent / "data" / "_info" / name
    return path.read_text().split()


def build_imagenet() -> None:
    from open_clip import zero_shot_metadata as zsm

    wnids = _timm_info("imagenet_synsets.txt")
    out = {
        "source": "open_clip.zero_shot_metadata (OpenAI CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb); "
        "WNIDs from timm data/_info/imagenet_synsets.txt (same order as TFDS imagenet2012 labels)",
        "classnames": list(zsm.IMAGENET_CLASSNAMES),
        "wnids": wnids,
        "templates": _template_strings(zsm.OPENAI_IMAGENET_TEMPLATES),
        "templates_simple": _template_strings(zsm.SIMPLE_IMAGENET_TEMPLATES),
    }
    assert len(out["classnames"]) == len(wnids) == 1000
    _write("imagenet.json", out)
    for subset in ("imagenet_r", "imagenet_a"):
        sub = _timm_info(f"{subset}_synsets.txt")
        assert len(sub) == 200 and set(sub) <= set(wnids)
        _write(
            f"{subset}.json",
            {
                "source": f"timm data/_info/{subset}_synsets.txt (equal to the list in hendrycks' eval code)",
                "wnids": sub,
            },
        )


def build_objectnet(mappings: Path) -> None:
    to_imagenet = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text())
    folder_to_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text())
    index_to_label = json.loads((mappings / "imagenet_to_labels.json").read_text())
    label_to_index = {v: int(k) for k, v in index_to_label.items()}
    label_to_folder = {v: k for k, v in folder_to_label.items()}
    classes = []
    for name, imagenet_labels in to_imagenet.items():
        indices = sorted(label_to_index[s] for s in imagenet_labels.split("; "))
        classes.append({"folder": label_to_folder[name], "name": name, "imagenet_indices": indices})
    classes.sort(key=lambda c: c["folder"])
    assert len(classes) == 113
    _write(
        "objectnet.json",
        {
            "source": "ObjectNet 1.0 mappings/ (objectnet_to_imagenet_1k.json, folder_to_objectnet_label.json), "
            "as redistributed in modestyachts/imagenet-testbed src/eval_settings/objectnet_metadata",
            "classes": classes,
        },
    )


def _write(name: str, obj: dict) -> None:
    with open(HERE / name, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(HERE, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectnet-mappings", type=Path, help="ObjectNet mappings/ folder")
    args = parser.parse_args()
    build_imagenet()
    if args.objectnet_mappings:
        build_objectnet(args.objectnet_mappings)


if __name__ == "__main__":
    main()
