"""Evaluation batches split over a 'data' mesh of 8 simulated CPU devices give the single-device numbers.

The check runs in a subprocess because the device count must be set before jax is imported, and the rest
of the suite runs on one device in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import numpy as np
    from clip_jax.eval import classifier as zsc
    from clip_jax.eval import features as F, zeroshot
    from clip_jax.eval.runtime import default_mesh
    from clip_jax.models import random_params
    from clip_jax.models import CLIP, get_model_config
    from clip_jax.sharding import make_mesh

    assert jax.device_count() == 8
    model = CLIP(get_model_config("tiny"))
    params = random_params(model, seed=0)
    mesh = default_mesh()
    assert mesh is not None and mesh.size == 8 and mesh.shape["data"] == 8
    one = make_mesh(data=1, devices=jax.devices()[:1])

    rng = np.random.default_rng(0)
    # 12 rows: not a multiple of 8, so the padding path runs; the last batch has 4 masked rows.
    batches = [
        {"image": rng.normal(size=(12, 32, 32, 3)).astype(np.float32), "label": rng.integers(0, 4, 12),
         "mask": np.arange(12) < n}
        for n in (12, 8)
    ]
    enc = F.image_encoder(model, params, mesh=mesh)
    out = enc._fn(enc.params, jax.device_put(np.zeros((16, 32, 32, 3), np.float32), enc._batch_sharding))
    assert len(out.sharding.device_set) == 8, out.sharding  # really split over the devices

    f8, y8 = F.extract_image_features(model, params, batches, mesh=mesh)
    f1, y1 = F.extract_image_features(model, params, batches, mesh=one)
    assert f8.shape == (20, 64) and np.array_equal(y8, y1)
    np.testing.assert_allclose(f8, f1, atol=1e-5)

    # The text tower runs through the same Encoder: the sharded classifier is checked via its metrics.
    names, templates = ["cat", "dog", "bird", "fish"], ["a photo of a {}.", "a {}."]
    c8 = zsc.build_zeroshot_classifier(model, params, names, templates, mesh=mesh, batch_size=12)
    m8 = zeroshot.zeroshot_eval(model, params, batches, classifier=c8, mesh=mesh)
    m1 = zeroshot.zeroshot_eval(model, params, batches, classifier=c8, mesh=one)
    feats_clf = f1 @ c8
    assert np.allclose(np.linalg.norm(c8, axis=0), 1, atol=1e-5)
    assert m8 == m1 and m8["num_examples"] == 20, (m8, m1)
    assert m8["acc1"] == float(np.mean(feats_clf.argmax(1) == y1))
    print("OK", m8)
    """
)


def test_sharded_evaluation_matches_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout
