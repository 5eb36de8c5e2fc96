"""Model-level properties that need no PyTorch reference (parity with open_clip is in test_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.models import (
    CLIP,
    get_model_config,
    init_params,
    interpolate_pos_embed,
    stack_layers,
    unstack_layers,
)
from clip_jax.models.transformer import attention, heads_major_attention, padded_attention

TOKENS = jnp.asarray([[49406, 320, 1929, 49407] + [0] * 73, [49406, 320, 2368, 539, 518, 49407] + [0] * 71])


@pytest.fixture(scope="module")
def tiny():
    model = CLIP(get_model_config("tiny"))
    return model, init_params(model, jax.random.key(0))


def images(n=2, size=32):
    return jax.random.normal(jax.random.key(1), (n, size, size, 3))


@pytest.mark.parametrize("causal", [False, True])
def test_padded_attention_equals_unpadded(causal):
    # The cuDNN path pads odd lengths (197, 77); check the padding + length masking on the XLA kernel.
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 13, 2, 8)) for i in range(3))
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    out = padded_attention(q, k, v, causal=causal, implementation=None)
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_heads_major_attention_equals_jax_attention(causal, dtype):
    # The model's default attention against jax.nn.dot_product_attention, values and gradients.
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 13, 3, 8), dtype) for i in range(3))

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))

    ours = lambda q, k, v: heads_major_attention(q, k, v, causal=causal)  # noqa: E731
    ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    out = ours(q, k, v)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.float32(out), np.float32(ref(q, k, v)), atol=tol)
    grads = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.float32(g), np.float32(r), atol=5 * tol)


def test_unknown_attention_impl_is_named():
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="attention_impl.*'flash'"):
        attention(q, q, q, causal=False, implementation="flash")


def test_scan_and_unrolled_layouts_agree(tiny):
    model, params = tiny
    scanned = CLIP(model.cfg, scan=True, remat_policy="full")
    stacked = stack_layers(params)
    assert stacked["visual"]["transformer"]["resblocks"]["mlp"]["c_fc"]["kernel"].shape[0] == 2
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), params)
    a = model.apply({"params": params}, images(), TOKENS)
    b = scanned.apply({"params": stacked}, images(), TOKENS)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots"])
def test_pooled_last_block_gradients_match_full_computation(tiny, remat_policy):
    # Unrolled, the last block computes only the pooled rows; scanned, every row. Same loss, same grads.
    model, params = tiny
    pooled = CLIP(model.cfg, remat_policy=remat_policy)
    full = CLIP(model.cfg, scan=True, remat_policy=remat_policy)

    def loss(m, p):
        img, txt, scale = m.apply({"params": p}, images(), TOKENS)
        return jnp.sum(jax.nn.log_softmax(scale * img @ txt.T) * jnp.eye(2))

    g_pooled = jax.jit(jax.grad(lambda p: loss(pooled, p)))(params)
    g_full = unstack_layers(jax.jit(jax.grad(lambda p: loss(full, p)))(stack_layers(params)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_pooled, g_full)
    # Positions past each text's end-of-text token never reach the pooled row.
    pos_grad = np.asarray(g_pooled["text"]["positional_embedding"])
    assert np.abs(pos_grad[:6]).max() > 0 and not pos_grad[6:].any()


def test_hidden_layer_states(tiny):
    model, params = tiny
    last = model.apply({"params": params}, TOKENS, hidden_layer=-1, method=model.encode_text)
    pen = model.apply({"params": params}, TOKENS, hidden_layer=-2, method=model.encode_text)
    assert last.shape == pen.shape == (2, 77, 64)
    assert not np.allclose(last, pen)
    scanned = CLIP(model.cfg, scan=True)
    pen_scan = scanned.apply(
        {"params": stack_layers(params)}, TOKENS, hidden_layer=-2, method=scanned.encode_text
    )
    np.testing.assert_allclose(pen_scan, pen, atol=1e-5)
    # The pooled output is ln_final(last)[eot] @ text_projection.
    p = params["text"]
    x = np.asarray(last, np.float64)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p["ln_final"]["scale"]) + np.asarray(
        p["ln_final"]["bias"]
    )
    eot = np.argmax(np.asarray(TOKENS), axis=1)
    expected = ln[np.arange(2), eot] @ np.asarray(p["text_projection"])
    got = model.apply({"params": params}, TOKENS, method=model.encode_text)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_call_returns_normalized_features_and_scale(tiny):
    model, params = tiny
    img, txt, scale = model.apply({"params": params}, images(), TOKENS)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)


def test_patch_dropout_changes_train_output_only(tiny):
    model, params = tiny
    flip = CLIP(model.cfg, patch_dropout=0.5)
    x = images()
    eval_out = flip.apply({"params": params}, x, method=flip.encode_image)
    np.testing.assert_allclose(
        eval_out, model.apply({"params": params}, x, method=model.encode_image), atol=1e-6
    )
    train_out = flip.apply(
        {"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)}, method=flip.encode_image
    )
    assert not np.allclose(train_out, eval_out, atol=1e-3)


def test_interpolate_pos_embed_keeps_class_token_and_grid_values():
    pos = jax.random.normal(jax.random.key(0), (1 + 4 * 4, 8))
    same = interpolate_pos_embed(pos, 4)
    np.testing.assert_array_equal(same, pos)
    bigger = interpolate_pos_embed(pos, 8)
    assert bigger.shape == (1 + 64, 8)
    np.testing.assert_array_equal(bigger[0], pos[0])
    # A constant grid stays constant under bicubic resizing.
    const = jnp.concatenate([pos[:1], jnp.ones((16, 8))])
    np.testing.assert_allclose(interpolate_pos_embed(const, 6)[1:], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(pos[:-1], 4)


def test_wrong_image_size_error_names_the_fix(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="interpolate_pos_embed"):
        model.apply({"params": params}, images(size=40), method=model.encode_image)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match="ViT-B-32"):
        get_model_config("ViT-B-33")


def test_named_configs_match_open_clip_hyperparameters():
    h = get_model_config("ViT-H-14")
    assert (h.embed_dim, h.vision.width, h.vision.layers, h.vision.heads, h.vision.patch_size) == (
        1024,
        1280,
        32,
        16,
        14,
    )
    assert (h.text.width, h.text.heads, h.text.layers) == (1024, 16, 24)
    l336 = get_model_config("ViT-L-14-336-quickgelu")
    assert l336.quick_gelu and l336.vision.image_size == 336 and l336.vision.grid_size == 24
