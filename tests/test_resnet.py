"""OpenAI's ModifiedResNet towers: parity with open_clip, every weights format, export, config inference,
BatchNorm's running statistics (eval and train mode, the train step), and the evaluators on an RN model.

The reference is open_clip's own ModifiedResNet in a small CLIP (open_clip.CLIP with a vision_cfg whose
layers is a list), random init with every BatchNorm's weight, bias, running mean and running variance
randomised too (at their inits, 1/0/0/1, and with open_clip's zero-init bn3 weights, a mapping that
dropped or swapped them would pass). Features agree to 1e-4 relative in fp32, as for the ViTs
(tests/test_parity.py). The 8-device check runs in tests/multidevice/resnet_train_check.py.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("skimage.data")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from adam_bounds import adam_drift_bound  # noqa: E402
from script_output import REPO, run_json_script  # noqa: E402
from test_parity import REL, TEXTS, assert_parity, clip_jax_outputs, open_clip_outputs, photos  # noqa: E402
from test_weights import randomize_torch_params, torchscript_of, with_openai_extras  # noqa: E402

from clip_jax import CLIP, CLIPConfig, export_open_clip, get_model_config, load_pretrained  # noqa: E402
from clip_jax.models import MODEL_CONFIGS, VisionConfig, interpolate_pos_embed, random_params  # noqa: E402
from clip_jax.models.resnet import BATCH_STATS, BatchNorm  # noqa: E402
from clip_jax.tokenizer import tokenize  # noqa: E402
from clip_jax.weights import identify  # noqa: E402
from clip_jax.weights.infer import infer_config  # noqa: E402
from clip_jax.weights.load import param_shapes  # noqa: E402
from clip_jax.weights.open_clip import expected_shapes  # noqa: E402

TINY_RN = get_model_config("tiny-rn")
RN_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")
U = 2.0**-24  # float32 unit roundoff


def tiny_rn_batch() -> dict:
    """8 random images and 8 captions at tiny-rn's shapes, the batch of the train-step tests."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((8, 64, 64, 3)).astype(np.float32),
        "text": tokenize([f"a photo of item {i}" for i in range(8)]),
    }


@functools.cache
def tiny_rn_loss_grads(dtype: Any = jnp.float32, remat_policy: str = "none"):
    """jit(make_loss_grads_and_stats) of tiny-rn; cached, so that the tests of one variant share one
    compile (a compile of tiny-rn's loss and gradient costs ~10 s of CPU, whatever the widths: XLA:CPU
    reuses the kernels of same-shaped layers, so it is the stages' distinct shapes that cost)."""
    from clip_jax.train.step import make_loss_grads_and_stats

    return jax.jit(make_loss_grads_and_stats(CLIP(TINY_RN, dtype=dtype, remat_policy=remat_policy)))


def tiny_rn_open_clip(quick_gelu: bool, seed: int) -> torch.nn.Module:
    """open_clip's CLIP with tiny-rn's shapes, every parameter and BatchNorm statistic random, eval mode."""
    torch.manual_seed(seed)
    cfg = TINY_RN.replace(quick_gelu=quick_gelu).to_open_clip()
    model = randomize_torch_params(open_clip.CLIP(**cfg), seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))
    return model.eval()


def flax_path(torch_key: str) -> list[str]:
    """open_clip's module path -> clip_jax's (layer2.0.downsample.1.running_var -> layer2_0/downsample_1/...)."""
    out: list[str] = []
    for part in torch_key.split("."):
        if part.isdigit():
            out[-1] += "_" + part
        else:
            out.append(part)
    return out


def save_safetensors(model: torch.nn.Module, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """(open_clip model, its .safetensors, pixels, tokens, open_clip's outputs)."""
    model = tiny_rn_open_clip(quick_gelu=False, seed=0)
    path = save_safetensors(model, tmp_path_factory.mktemp("rn") / "open_clip_model.safetensors")
    images, tokens = photos(TINY_RN.vision.image_size), tokenize(TEXTS)
    return model, path, images, tokens, open_clip_outputs(model, images, tokens)


def test_named_rn_configs_are_open_clips():
    """RN50..RN50x64 (and -quickgelu) translate from open_clip's json files to the named configs and back."""
    for name in RN_NAMES + tuple(n + "-quickgelu" for n in RN_NAMES):
        oc = open_clip.get_model_config(name)
        cfg = CLIPConfig.from_open_clip(oc)
        assert cfg == MODEL_CONFIGS[name], name
        assert CLIPConfig.from_open_clip(cfg.to_open_clip()) == cfg
        assert cfg.vision.resnet and cfg.vision.heads == cfg.vision.width * 32 // 64
        # Through a JSON round trip (layers a list again), as clip_config.json / open_clip_config.json do.
        assert CLIPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    rn50 = get_model_config("RN50-quickgelu")
    assert (rn50.embed_dim, rn50.vision.layers, rn50.vision.grid_size, rn50.vision.heads) == (
        1024,
        (3, 4, 6, 3),
        7,
        32,
    )


def test_rn_shapes_infer_their_config_and_build_open_clips_keys():
    """Each RN config open_clip ships: its state dict's shapes (meta device) infer exactly it, and its
    params tree has open_clip's keys and shapes (num_batches_tracked aside, which holds no weight)."""
    for name in RN_NAMES:
        with torch.device("meta"):
            sd = open_clip.CLIP(**open_clip.get_model_config(name)).state_dict()
        cfg = infer_config(sd, quick_gelu=False)
        assert cfg == get_model_config(name), name
        want = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        assert expected_shapes(param_shapes(cfg)) == want, name


def test_safetensors_parity(ref):
    model_ref, path, images, tokens, expected = ref
    model, params = load_pretrained("tiny-rn", path)
    assert_parity(clip_jax_outputs(model, params, images, tokens), expected)


def test_safetensors_without_torch_and_bin_inferred(ref, tmp_path, monkeypatch):
    """A torch .bin with its config inferred from shapes gives the params the safetensors file gives,
    which loads with torch unimportable."""
    model_ref, path, *_ = ref
    torch.save(model_ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model, from_bin = load_pretrained(None, tmp_path / "open_clip_pytorch_model.bin", quick_gelu=False)
    assert model.cfg == TINY_RN
    monkeypatch.setitem(sys.modules, "torch", None)
    _, from_st = load_pretrained("tiny-rn", path)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), from_bin, from_st)
    assert all(jax.tree.leaves(same))


def test_openai_torchscript_and_state_dict(tmp_path):
    """OpenAI's forms: a TorchScript archive with its int entries (QuickGELU and the config inferred
    without being told) and the fp16 state dict of such a model (torch.save), both to 1e-4."""
    ref = tiny_rn_open_clip(quick_gelu=True, seed=2)
    images, tokens = photos(64), tokenize(TEXTS)
    expected = open_clip_outputs(ref, images, tokens)
    del ref.context_length, ref.vocab_size  # OpenAI's archives carry them as buffers instead
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        ref.register_buffer(name, torch.tensor(value))
    x, t = torch.from_numpy(images[:1]).permute(0, 3, 1, 2), torch.from_numpy(tokens[:1]).long()
    traced = torch.jit.trace_module(
        ref, {"forward": (x, t), "encode_image": (x,), "encode_text": (t,)}, check_trace=False
    )
    torch.jit.save(traced, str(tmp_path / "RN-custom.pt"))
    model, params = load_pretrained(None, tmp_path / "RN-custom.pt")
    assert model.cfg == get_model_config("tiny-rn-quickgelu")
    assert_parity(clip_jax_outputs(model, params, images, tokens), expected)
    # The same weights as OpenAI's fp16 state dict: parity to fp16's rounding of the weights instead.
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    for k in ("input_resolution", "context_length", "vocab_size"):
        del sd[k]
    torch.save(sd, tmp_path / "RN-fp16.pt")
    _, params16 = load_pretrained("tiny-rn-quickgelu", tmp_path / "RN-fp16.pt")
    half = jax.tree.map(lambda a: np.asarray(a, np.float16).astype(np.float32), params)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), half, params16)
    assert all(jax.tree.leaves(same))


def test_openai_rn_archive_is_tagged_openai(tmp_path):
    """RN50's keys and shapes (fp16, with OpenAI's int entries and BatchNorm counters): 'openai'."""
    with torch.device("meta"):
        shapes = open_clip.CLIP(**open_clip.get_model_config("RN50-quickgelu")).state_dict()
    sd = {
        k: torch.zeros(v.shape, dtype=torch.long if "num_batches" in k else torch.float16)
        for k, v in shapes.items()
    }
    path = torchscript_of(with_openai_extras(sd, 224), tmp_path / "RN50.pt")
    assert identify.openai_model_name(path) == "RN50-quickgelu"


def test_export_to_open_clip(ref, tmp_path):
    """export_open_clip's file and open_clip_config.json rebuild the model in open_clip: strict load,
    every tensor (running statistics included) equal, the same features."""
    model_ref, path, images, tokens, expected = ref
    model, params = load_pretrained("tiny-rn", path)
    out = export_open_clip(params, model.cfg, tmp_path / "export" / "model.safetensors")
    oc_cfg = json.loads((out.parent / "open_clip_config.json").read_text())["model_cfg"]
    assert oc_cfg["vision_cfg"]["layers"] == [1, 2, 1, 1]
    fresh = open_clip.CLIP(**oc_cfg).eval()
    open_clip.load_checkpoint(fresh, str(out), strict=True)
    for k, v in model_ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert_parity(open_clip_outputs(fresh, images, tokens), expected)


def test_each_batchnorm_leaf_is_checked(ref):
    """A running mean, a running variance, a BatchNorm weight and bias put back at their inits (0, 1, 1, 0),
    as a mapping that dropped them would leave them, fail parity: eval mode reads the stored statistics."""
    model_ref, path, images, tokens, expected = ref
    model, params = load_pretrained("tiny-rn", path)
    encode = jax.jit(lambda p: model.apply({"params": p}, jnp.asarray(images), method=CLIP.encode_image))
    img = lambda p: np.asarray(encode(p) / jnp.linalg.norm(encode(p), axis=-1, keepdims=True))  # noqa: E731
    err = lambda p: np.max(np.abs(img(p) - expected["image"])) / np.max(np.abs(expected["image"]))  # noqa: E731
    assert err(params) <= REL
    for module in ("bn1", "layer2_1/bn3", "layer4_0/downsample_1"):
        for leaf, init in (("running_mean", 0.0), ("running_var", 1.0), ("scale", 1.0), ("bias", 0.0)):
            keys = ("visual", *module.split("/"), leaf)
            reset = jax.tree_util.tree_map_with_path(
                lambda kp, a, keys=keys, v=init: (
                    np.full_like(a, v) if tuple(k.key for k in kp) == keys else a
                ),
                params,
            )
            # Beyond the tolerance with room (the stem's variances move features least: ~5x REL).
            assert err(reset) > 3 * REL, keys


def test_other_image_size_interpolates_the_attention_pools_embedding(ref):
    """96 px images (a 3x3 map): the 2x2 positional embedding is resized as interpolate_pos_embed does
    (open_clip's resize_pos_embed, tests/test_parity.py); open_clip's model built for 96 px with that
    embedding computes the same features."""
    model_ref, path, *_ = ref
    model, params = load_pretrained("tiny-rn", path)
    images = photos(96)
    ours = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image))(params, images)
    big = open_clip.CLIP(**TINY_RN.replace(vision=VisionConfig(96, None, 16, (1, 2, 1, 1))).to_open_clip())
    sd = dict(model_ref.state_dict())
    pos = np.asarray(params["visual"]["attnpool"]["positional_embedding"])
    sd["visual.attnpool.positional_embedding"] = torch.from_numpy(np.asarray(interpolate_pos_embed(pos, 3)))
    big.load_state_dict(sd)
    with torch.no_grad():
        want = big.eval().encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_array_less(np.max(np.abs(np.asarray(ours) - want)) / np.max(np.abs(want)), REL)


def test_train_mode_equals_torch_train_mode(ref):
    """train=True normalises with the batch's statistics and, with the batch_stats collection mutable,
    returns torch's updated running statistics (momentum 0.1, unbiased variance) for every BatchNorm."""
    model_ref, path, images, tokens, _ = ref
    model, params = load_pretrained("tiny-rn", path)
    x = np.concatenate([images, images[:, ::-1]])  # 6 images: batch statistics differ from the stored ones
    torch_model = tiny_rn_open_clip(quick_gelu=False, seed=0).train()
    with torch.no_grad():
        want = torch_model.encode_image(torch.from_numpy(x.copy()).permute(0, 3, 1, 2)).numpy()
    got, updated = jax.jit(
        lambda p: model.apply(
            {"params": p}, jnp.asarray(x), train=True, method=CLIP.encode_image, mutable=[BATCH_STATS]
        )
    )(params)
    assert np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)) <= REL
    stats = updated[BATCH_STATS]["visual"]
    checked = 0
    for key, t in torch_model.visual.named_buffers():
        if key.endswith("num_batches_tracked"):
            continue
        node = stats
        for m in flax_path(key):
            node = node[m]
        ours = np.asarray(node)
        t = t.numpy()
        assert np.max(np.abs(ours - t)) <= REL * np.max(np.abs(t)), key
        checked += 1
    assert checked == 2 * (3 + 3 * 5 + 4)  # stem 3, 5 blocks of 3, 4 downsample BatchNorms


def test_batchnorm_statistics_to_float32_rounding():
    """One BatchNorm in training against float64 torch on the same input, to bounds from the sums: the
    batch mean of n float32 terms is within n u mean|x| of the exact one, the variance (a sum of squares:
    no cancellation) within (n + 4) u relative; the update adds one rounding of each term."""
    rng = np.random.default_rng(0)
    x = (1.5 + 2.0 * rng.standard_normal((4, 8, 8, 16))).astype(np.float32)
    n = 4 * 8 * 8
    bn = BatchNorm(train=True)
    variables = {"params": jax.tree.map(np.asarray, bn.init(jax.random.key(0), x)["params"])}
    variables["params"]["running_mean"] = rng.standard_normal(16).astype(np.float32)
    variables["params"]["running_var"] = rng.uniform(0.5, 2, 16).astype(np.float32)
    y, updated = bn.apply(variables, x, mutable=[BATCH_STATS])
    ref = torch.nn.BatchNorm2d(16).double().train()
    with torch.no_grad():
        ref.running_mean.copy_(torch.from_numpy(variables["params"]["running_mean"]).double())
        ref.running_var.copy_(torch.from_numpy(variables["params"]["running_var"]).double())
        want = ref(torch.from_numpy(x).double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    abs_mean = np.abs(x).mean(axis=(0, 1, 2))
    mean_err = np.abs(np.asarray(updated[BATCH_STATS]["running_mean"]) - ref.running_mean.numpy())
    assert np.all(mean_err <= 0.1 * n * U * abs_mean + 4 * U * np.abs(ref.running_mean.numpy()))
    var_err = np.abs(np.asarray(updated[BATCH_STATS]["running_var"]) - ref.running_var.numpy())
    assert np.all(var_err <= (n + 8) * U * ref.running_var.numpy())
    # y = (x - mean) / std: the mean's error over std, the std's relative error times |y|, a few roundings.
    std = x.astype(np.float64).std(axis=(0, 1, 2))
    bound = n * U * abs_mean / std + (n + 8) * U * np.abs(want) + 8 * U * (1 + np.abs(want))
    assert np.all(np.abs(np.asarray(y) - want) <= bound)


def test_train_step_updates_statistics_not_by_the_optimizer():
    """make_train_step on tiny-rn, 3 steps: the weights train; each step's running
    statistics are exactly those the forward pass returns (weight decay and Adam never touch them),
    their gradients are exactly zero, and eval mode then reads them."""
    import optax

    from clip_jax.models.resnet import batch_stats_of
    from clip_jax.train.step import init_train_state, make_train_step

    model = CLIP(TINY_RN)
    params = random_params(model, seed=0, std=0.05)
    batch = tiny_rn_batch()
    tx = optax.adamw(1e-3, weight_decay=0.5)
    state = init_train_state(params, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx))
    lossf = tiny_rn_loss_grads()
    losses = []
    for _ in range(3):
        _, grads, stats = lossf(state.params, batch, jax.random.key(1))
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(batch_stats_of(grads)))
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), batch_stats_of(state.params), stats)
        assert all(jax.tree.leaves(same)) and len(jax.tree.leaves(same)) == 2 * 22
    assert all(np.isfinite(losses))
    kernel = lambda p: p["visual"]["layer1_0"]["conv2"]["kernel"]  # noqa: E731
    assert not np.array_equal(kernel(state.params), kernel(params))  # the weights train
    before = batch_stats_of(params)["visual"]["bn1"]["running_var"]
    assert not np.allclose(batch_stats_of(state.params)["visual"]["bn1"]["running_var"], before)


def test_zeroshot_evaluator_runs_on_a_resnet():
    """The evaluators are the ViTs' (model.apply({'params': p}, ..., method=CLIP.encode_image)): zero-shot
    on tiny-rn with random params needs nothing RN-specific, and eval mode is what it runs."""
    from clip_jax.eval import zeroshot

    model = CLIP(TINY_RN)
    params = random_params(model, seed=0)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(12, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    ds = [
        {
            "image": images[s : s + 8],
            "label": labels[s : s + 8],
            "mask": np.ones(len(labels[s : s + 8]), np.int32),
        }
        for s in range(0, 12, 8)
    ]
    m = zeroshot.zeroshot_eval(model, params, ds, ["red square", "blue circle", "cat"], ["a photo of a {}."])
    assert m["num_examples"] == 12 and 0.0 <= m["acc1"] <= m["acc5"] <= 1.0


def test_eight_devices_train_like_one():
    """tests/multidevice/resnet_train_check.py: the trainer (clip_jax.train.train, config.model 'tiny-rn')
    on 1 and 8 devices, and a resumed run."""
    check = run_json_script(REPO / "tests" / "multidevice" / "resnet_train_check.py", timeout=600)
    assert check["devices"] == 8
    # At step 1 (the same params) the two runs' arithmetic differs in the order of the batch reductions
    # only (BatchNorm's statistics and the loss: each device sums its shard, then the 8 partial sums are
    # added): the project's fp32 parity criterion. Later steps start from params that Adam's rounding
    # drift may have moved apart by at most adam_drift_bound per parameter, which moves the loss by at most
    # that times the gradient's L1 norm (first order; tests/adam_bounds.py).
    one, eight = check["losses"]["1"], check["losses"]["8"]
    assert len(one) == len(eight) == check["steps"]
    for s, (a, b) in enumerate(zip(one, eight, strict=True), start=1):
        drift = adam_drift_bound(s - 1, check["lr"]) * check["grad_l1"]
        assert abs(a - b) <= REL * abs(a) + drift, (s, a, b, drift)
    assert one[0] == pytest.approx(eight[0], rel=REL)
    # Statistics in their own scale (means in channel standard deviations): after 3 steps their gap is
    # the reductions' rounding plus the params' drift, which moves BatchNorm inputs by a part in 1e-4 of
    # their scale (lr 1e-4 per step, 2 drifted steps through 6 layers) at the most.
    for name, err in check["stat_errors"].items():
        assert err <= REL + 2 * 6 * check["lr"], name
    # BatchNorm over each device's own rows (what pmap without a cross-device mean would give) is far off.
    assert check["local_bn_loss_error"] > 10 * REL
    # A run resumed from its step-2 checkpoint ends with the uninterrupted run's state, bit for bit.
    assert check["resumed_equal"] and check["resumed_from"] == 2


def test_loss_and_grads_in_bf16_and_with_remat():
    """tiny-rn's loss and gradient (what the train step feeds its optimizer) in bf16 (params fp32,
    activations bf16) and with remat.

    fp32 with remat_policy "full" is bit-identical to no remat (the loss, every gradient and the updated
    BatchNorm statistics; so the optimizer's update is too): remat only recomputes the same ops. In bf16
    the recomputed forward may round in other places (XLA fuses it otherwise), so bf16 with remat is held
    to the bf16 bound below, as bf16 against fp32 is. Each variant is its own program, as in training
    (in one program XLA would merge the two forwards and the check would be void).

    The bound: bf16 keeps 8 significant bits, unit roundoff u = 2^-8. Along the deepest path of
    tiny-rn (stem 3 convs, 5 bottlenecks of 3 convs, BatchNorm and a residual add, the attention pool,
    2 text blocks of ~8 ops) n ~ 50 roundings, which accumulate as a random walk to a relative feature
    error of sqrt(n) u. A unit feature moved by that, in a random direction of its D = 64 dimensions,
    moves its cosine with another feature by about sqrt(n) u / sqrt(D); each logit is scale * cos
    (scale 1/0.07) of two such features, and a mean of log-softmax rows moves by at most twice its
    largest logit change (it is 1-Lipschitz in the max norm, in both directions): |loss change| <=
    4 * scale * sqrt(n) u / sqrt(D) ~ 0.2 (about 10% of the loss of 8 random pairs, log 8 ~ 2.1).
    """
    params = random_params(CLIP(TINY_RN), seed=0, std=0.05)
    batch = tiny_rn_batch()
    runs = {}
    for name, kw in {
        "fp32": {},
        "fp32_remat": {"remat_policy": "full"},
        "bf16": {"dtype": jnp.bfloat16},
        "bf16_remat": {"dtype": jnp.bfloat16, "remat_policy": "full"},
    }.items():
        loss, grads, stats = jax.device_get(tiny_rn_loss_grads(**kw)(params, batch, jax.random.key(1)))
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), name
        runs[name] = (float(loss), grads, stats)
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))  # noqa: E731
    (loss, grads, stats), (loss_remat, grads_remat, stats_remat) = runs["fp32"], runs["fp32_remat"]
    assert loss_remat == loss
    assert same(grads, grads_remat) and same(stats, stats_remat) and len(jax.tree.leaves(stats)) == 2 * 22
    bound = 4 * (1 / 0.07) * np.sqrt(50) * 2.0**-8 / np.sqrt(TINY_RN.embed_dim)
    for name in ("bf16", "bf16_remat"):
        assert abs(runs[name][0] - loss) <= bound, (name, runs[name][0], loss, bound)
        assert runs[name][0] != loss  # it did run in bf16
    assert abs(runs["bf16_remat"][0] - runs["bf16"][0]) <= bound
