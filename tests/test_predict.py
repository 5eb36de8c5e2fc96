"""The zero-shot predict CLI against open_clip's own pipeline (its preprocess, tokenizer and model)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from clip_jax.predict import main  # noqa: E402

LABELS = ["a photo of a cat", "a dog", "a diagram", "a cup of coffee"]


def test_predict_matches_open_clip(tmp_path, capsys):
    torch.manual_seed(0)
    model_cfg = dict(
        embed_dim=64,
        vision_cfg=dict(image_size=112, patch_size=14, width=128, layers=2, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
    )
    ref = open_clip.CLIP(**model_cfg).eval()
    with torch.no_grad():
        ref.logit_scale.fill_(float(np.log(100.0)))  # a trained model's temperature, so probs are peaked
    torch.save(ref.state_dict(), tmp_path / "weights.bin")
    # A custom model: its heads leave no trace in the weights, so its config travels beside them.
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    image = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(image)

    probs = main(
        [
            "--weights",
            str(tmp_path / "weights.bin"),
            "--no-quick-gelu",
            "--image",
            str(image),
            "--labels",
            ",".join(LABELS),
        ]
    )
    printed = capsys.readouterr().out
    shown = {}
    for label in LABELS:
        m = re.search(rf"^\s*{re.escape(label)}\s+([0-9.]+)$", printed, re.MULTILINE)
        assert m, f"no probability printed for {label!r} in:\n{printed}"
        shown[label] = float(m.group(1))

    preprocess = open_clip.image_transform(112, is_train=False)
    with torch.no_grad():
        img = ref.encode_image(preprocess(Image.open(image)).unsqueeze(0), normalize=True)
        txt = ref.encode_text(open_clip.tokenize(LABELS), normalize=True)
        expected = (ref.logit_scale.exp() * img @ txt.T).softmax(dim=-1)[0].numpy()
    assert expected.max() - expected.min() > 0.05  # not a uniform, uninformative answer
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    np.testing.assert_allclose([shown[label] for label in LABELS], expected, atol=1e-4)
