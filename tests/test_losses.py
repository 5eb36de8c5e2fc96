"""Contrastive losses: dense vs numpy and open_clip; sharded vs dense on 8 simulated CPU devices."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from script_output import run_json_script

from clip_jax.train.losses import contrastive_loss, sigmoid_loss, softmax_loss

REPO = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO / "tests" / "multidevice" / "losses_check.py"


def _features(batch: int, embed: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img, txt = (rng.standard_normal((batch, embed)) for _ in range(2))
    return (
        (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32),
        (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32),
    )


def _numpy_softmax_loss(img, txt, scale):
    """Loop-by-loop InfoNCE in float64, written from the definition (no shared code with losses.py)."""
    n = img.shape[0]
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    total = 0.0
    for i in range(n):
        total += -np.log(np.exp(logits[i, i]) / np.exp(logits[i, :]).sum())  # image i -> its text
        total += -np.log(np.exp(logits[i, i]) / np.exp(logits[:, i]).sum())  # text i -> its image
    return total / (2 * n)


def _numpy_sigmoid_loss(img, txt, scale, bias):
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * float(np.dot(img[i].astype(np.float64), txt[j].astype(np.float64))) + bias
            label = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-label * z))  # -log sigmoid(label * z)
    return total / n


def test_dense_softmax_matches_numpy():
    img, txt = _features(6, 5, seed=1)
    got = softmax_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(3.7))
    np.testing.assert_allclose(float(got), _numpy_softmax_loss(img, txt, 3.7), rtol=1e-6)


def test_dense_sigmoid_matches_numpy():
    img, txt = _features(6, 5, seed=2)
    got = sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(7.0), jnp.float32(-2.5))
    np.testing.assert_allclose(float(got), _numpy_sigmoid_loss(img, txt, 7.0, -2.5), rtol=1e-6)


def test_dense_matches_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    torch = pytest.importorskip("torch")
    img, txt = _features(16, 8, seed=3)
    scale, bias = 14.0, -10.0
    t_img, t_txt = torch.from_numpy(img), torch.from_numpy(txt)
    t_scale, t_bias = torch.tensor(scale), torch.tensor(bias)
    ref_softmax = open_clip_loss.ClipLoss()(t_img, t_txt, t_scale).item()
    ref_sigmoid = open_clip_loss.SigLipLoss()(t_img, t_txt, t_scale, t_bias).item()
    j_img, j_txt = jnp.asarray(img), jnp.asarray(txt)
    np.testing.assert_allclose(float(softmax_loss(j_img, j_txt, scale)), ref_softmax, rtol=1e-5)
    np.testing.assert_allclose(float(sigmoid_loss(j_img, j_txt, scale, bias)), ref_sigmoid, rtol=1e-5)


def test_bf16_features_give_float32_loss():
    img, txt = _features(8, 16, seed=4)
    lo = softmax_loss(jnp.asarray(img, jnp.bfloat16), jnp.asarray(txt, jnp.bfloat16), jnp.float32(10.0))
    hi = softmax_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(10.0))
    assert lo.dtype == jnp.float32
    # Only the bf16 rounding of the inputs differs (about 3 significant digits).
    np.testing.assert_allclose(float(lo), float(hi), rtol=1e-2)


def test_contrastive_loss_dense_dispatch():
    img, txt = (jnp.asarray(x) for x in _features(8, 4, seed=5))
    np.testing.assert_array_equal(contrastive_loss("softmax", img, txt, 5.0), softmax_loss(img, txt, 5.0))
    np.testing.assert_array_equal(
        contrastive_loss("sigmoid", img, txt, 5.0, -1.0), sigmoid_loss(img, txt, 5.0, -1.0)
    )


def test_contrastive_loss_errors():
    img, txt = (jnp.asarray(x) for x in _features(4, 4, seed=6))
    with pytest.raises(ValueError, match="loss"):
        contrastive_loss("infonce", img, txt, 5.0)
    with pytest.raises(ValueError, match="logit_bias"):
        contrastive_loss("sigmoid", img, txt, 5.0)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="batch_axes"):
        contrastive_loss("softmax", img, txt, 5.0, mesh=mesh, batch_axes=("data", "fsdp"))


@pytest.fixture(scope="module")
def multidevice():
    """Run the 8-device check in its own process: XLA_FLAGS must be set before jax is imported."""
    return run_json_script(CHECK_SCRIPT, timeout=300)


def test_multidevice_setup(multidevice):
    assert multidevice["devices"] == 8
    assert {(r["kind"], r["mesh"]) for r in multidevice["parity"]} == {
        (kind, mesh)
        for kind in ("softmax", "sigmoid")
        for mesh in ("data=8", "fsdp=8", "data=2,fsdp=2,tensor=2")
    }


def test_sharded_matches_dense_float32(multidevice):
    """Loss and grads w.r.t. img, txt, scale, bias within 1e-5 (relative to the largest entry)."""
    for r in multidevice["parity"]:
        assert r["errs"].keys() == {"loss", "img", "txt", "scale", "bias"}
        bad = {k: v for k, v in r["errs"].items() if not v <= 1e-5}
        assert not bad, (r["kind"], r["mesh"], bad)


def test_sharded_matches_dense_bf16(multidevice):
    """bf16 features: float32 loss agrees to 1e-5; bf16 grads to about one bf16 ulp."""
    for r in multidevice["parity_bf16"]:
        assert r["loss_dtype"] == "float32"
        assert r["errs"]["loss"] <= 1e-5, r
        assert max(r["errs"][k] for k in ("img", "txt", "scale", "bias")) <= 1e-2, r


def test_sharded_memory_is_at_most_a_quarter_of_dense(multidevice):
    """Per-device temp + argument + output bytes of jit(value_and_grad) at B=4096, E=512, 8 devices.

    Dense is jitted on the same mesh with replicated features (every device builds the B x B logits).
    """
    rows = {(r["kind"], r["variant"]): r for r in multidevice["memory"]}
    for kind in ("softmax", "sigmoid"):
        dense, sharded = rows[(kind, "dense-replicated")], rows[(kind, "sharded")]
        assert sharded["batch"] == 4096 and sharded["embed"] == 512 and sharded["devices"] == 8
        assert sharded["total"] <= dense["total"] / 4, (kind, sharded["total"], dense["total"])
        # No device holds even one global B x B float32 matrix.
        assert sharded["temp"] < 4096 * 4096 * 4, (kind, sharded["temp"])
