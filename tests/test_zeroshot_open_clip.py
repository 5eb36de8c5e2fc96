"""Zero-shot agrees with open_clip end to end: a tiny CLIP trained on the synthetic dataset, exported to
open_clip, classifies the same images as open_clip's own zero-shot code does (`build_zero_shot_classifier`,
its tokenizer and its eval preprocess on the same encoded bytes), at most one image apart (float ties)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from clip_jax.models import MODEL_CONFIGS, CLIPConfig

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

DATASET, SPLIT, TASK = "clip_synthetic/tiny", "test", "color"


def test_configs_round_trip_through_open_clips_json():
    for name, cfg in MODEL_CONFIGS.items():
        if cfg.vision.pool_type == "map":  # SigLIP: open_clip builds its image tower from timm
            with pytest.raises(ValueError, match="open_clip's CLIP towers cannot express"):
                cfg.to_open_clip()
            continue
        assert CLIPConfig.from_open_clip(cfg.to_open_clip()) == cfg, name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, params, exported .safetensors) of a tiny CLIP trained 80 steps on clip_synthetic/tiny (loss 3.47 -> ~2.7)."""
    from clip_jax.data import default_data_config, testing
    from clip_jax.models import CLIP, unstack_layers
    from clip_jax.train.config import default_config
    from clip_jax.train.loop import train
    from clip_jax.weights import export_open_clip

    workdir = tmp_path_factory.mktemp("run")
    c = default_config()
    c.model, c.batch_size, c.total_steps, c.warmup_steps, c.lr = "tiny", 32, 80, 5, 5e-4
    c.log_every = c.checkpoint_every = 80
    c.data = default_data_config()
    c.data.source, c.data.name, c.data.data_dir = "synthetic", "tiny", testing.tiny_synthetic_data_dir()
    state = train(c, str(workdir), devices=jax.devices()[:1])
    model = CLIP(MODEL_CONFIGS["tiny"])
    params = unstack_layers(jax.tree.map(np.asarray, state.params))
    path = export_open_clip(params, model.cfg, workdir / "export" / "open_clip_model.safetensors")
    return model, params, path


def _open_clip_predictions(path, classnames, templates, images: list[bytes]) -> np.ndarray:
    import io

    from PIL import Image

    cfg = json.loads((path.parent / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.CLIP(**cfg).eval()
    open_clip.load_checkpoint(model, str(path), strict=True)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates)
    transform = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    x = torch.stack([transform(Image.open(io.BytesIO(b))) for b in images])
    with torch.no_grad():
        logits = 100.0 * model.encode_image(x, normalize=True) @ classifier
    return logits.argmax(-1).numpy()


def test_zeroshot_predictions_agree_with_open_clip(trained):
    import tensorflow_datasets as tfds

    from clip_jax.data import make_eval_dataset, testing, zeroshot_tasks
    from clip_jax.data.builders import get_builder
    from clip_jax.eval import classifier as zsc
    from clip_jax.eval.zeroshot import ZeroShot

    model, params, path = trained
    data_dir = testing.tiny_synthetic_data_dir()
    classnames, templates = (list(x) for x in zeroshot_tasks()[TASK])

    # Ours: the zero-shot classifier and logits that the ZeroShot evaluator runs, per example index.
    clf = zsc.build_zeroshot_classifier(model, params, classnames, templates)
    logits = zsc.logits_encoder(model, params)
    ours, labels = {}, {}
    ds = make_eval_dataset(DATASET, SPLIT, batch_size=8, image_size=32, data_dir=data_dir, label_key=TASK)
    for batch in ds:
        pred = logits(batch["image"], clf).argmax(-1)
        for i in np.flatnonzero(batch["mask"]):
            ours[int(batch["index"][i])], labels[int(batch["index"][i])] = (
                int(pred[i]),
                int(batch["label"][i]),
            )

    # open_clip's: the same encoded images, in the split's order.
    raw = get_builder(DATASET, data_dir).as_dataset(
        split=SPLIT, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    examples = list(raw.as_numpy_iterator())
    theirs = _open_clip_predictions(path, classnames, templates, [ex["image"] for ex in examples])
    assert [int(ex[TASK]) for ex in examples] == [labels[i] for i in range(len(examples))]  # same order

    ours_list = np.array([ours[i] for i in range(len(examples))])
    assert len(set(ours_list.tolist())) > 1, "a constant classifier would agree trivially"
    differ = int((ours_list != theirs).sum())
    print(f"{differ} of {len(examples)} predictions differ; {len(set(ours_list.tolist()))} classes predicted")
    assert differ <= 1, (ours_list, theirs)
    # The evaluator's accuracy is open_clip's, up to the one image that may differ.
    acc = ZeroShot({"dataset": DATASET, "task": TASK, "data_dir": data_dir, "batch_size": 8}, model).run(
        params
    )
    their_acc = float((theirs == np.array([labels[i] for i in range(len(examples))])).mean())
    assert abs(acc["acc1"] - their_acc) <= 1 / len(examples) + 1e-9
