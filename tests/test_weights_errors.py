"""Weight-file load errors name the file and what is wrong with it.

A truncated file, a file of another format than its name says, a missing key and a mis-shaped key each
fail with a ValueError whose message names the path (and the key and both shapes where one is at fault),
not with the reading library's bare message. The checkpoints are the random 'tiny' state dict of
test_weights.py; the torch cases skip without torch.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_weights import TINY, random_tiny_params

from clip_jax import load_pretrained
from clip_jax.weights.open_clip import params_to_state_dict


@pytest.fixture(scope="module")
def tiny_params():
    return random_tiny_params()


@pytest.fixture
def tiny_sd(tiny_params):
    return params_to_state_dict(tiny_params)


def error_of(path, name="tiny", **kw) -> str:
    with pytest.raises(ValueError) as e:
        load_pretrained(name, path, **kw)
    return str(e.value)


def write_safetensors(sd, path):
    save_file(sd, str(path))
    return path


def cut(path, keep: float | int = 0.5):
    """Cut the file at `path` to `keep` of its length (a fraction) or to `keep` bytes (an int), as an
    interrupted download or copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors(tiny_sd, tmp_path, keep):
    path = cut(write_safetensors(tiny_sd, tmp_path / "m.safetensors"), keep)
    size = path.stat().st_size
    assert re.fullmatch(
        rf"{re.escape(str(path))} is truncated: {size} bytes, but its header describes \d+ bytes "
        rf"\({len(tiny_sd)} tensors\)",
        error_of(path),
    )


@pytest.mark.parametrize("keep, says", [(100, "-byte header alone needs"), (5, "too short for")])
def test_safetensors_truncated_in_its_header(tiny_sd, tmp_path, keep, says):
    path = cut(write_safetensors(tiny_sd, tmp_path / "m.safetensors"), keep)
    msg = error_of(path)
    assert msg.startswith(f"{path} is truncated: {keep} bytes, ") and says in msg


def test_empty_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"")
    assert f"{path} is truncated: 0 bytes" in error_of(path)


def test_text_file_named_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<!DOCTYPE html><html>404 Not Found</html>\n")  # what a failed download can leave
    msg = error_of(path)
    assert f"{path} is not a safetensors file: a text file" in msg and "<!DOCTYPE" in msg


def test_corrupt_safetensors_header(tiny_sd, tmp_path):
    path = write_safetensors(tiny_sd, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[8 + 5 : 8 + 9] = b"\x00\xff\x00\xff"  # inside the JSON header
    path.write_bytes(bytes(data))
    msg = error_of(path)
    assert f"{path} is corrupt: its safetensors header is not valid" in msg


def test_torch_file_named_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    msg = error_of(path)
    assert f"{path} is not a safetensors file: a zip archive" in msg and ".bin, .pt or .pth" in msg


def test_safetensors_named_bin(tiny_sd, tmp_path):
    pytest.importorskip("torch")
    path = write_safetensors(tiny_sd, tmp_path / "pytorch_model.bin")
    msg = error_of(path)
    assert f"cannot read {path}: it looks like a safetensors file" in msg and "torch.load" in msg


@pytest.mark.parametrize(
    "content, says",
    [
        (
            b"this is not a checkpoint\n" * 4,
            "a text file, not a weights file (starts with b'this is not a ch')",
        ),
        (bytes(range(200, 256)) * 4, "not a weights file of a known format"),
        (b"", "the file is empty"),
    ],
)
def test_bin_that_is_not_a_torch_file(tmp_path, content, says):
    pytest.importorskip("torch")
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    msg = error_of(path)
    assert f"cannot read {path}: {says}" in msg and "torch.load(weights_only=True) failed" in msg


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_file(tiny_sd, tmp_path, legacy):
    torch = pytest.importorskip("torch")
    path = tmp_path / "open_clip_pytorch_model.bin"
    sd = {k: torch.from_numpy(v) for k, v in tiny_sd.items()}
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    msg = error_of(cut(path))
    assert f"cannot read {path}: " in msg
    # A zip loses its directory (at its end); a legacy pickle ends early, which torch reports as such.
    assert ("truncated or corrupt zip archive" in msg) if not legacy else ("pickle" in msg and "EOF" in msg)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_truncated_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(path))
    msg = error_of(cut(path))
    assert f"cannot read {path}: a truncated or corrupt zip archive" in msg


class NotATensor:
    pass


def test_pickle_of_other_objects(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, path)
    msg = error_of(path)
    assert f"cannot read {path}: it holds objects other than tensors" in msg
    assert "NotATensor" in msg  # what torch refused, from the middle of its long message


def test_missing_key_names_the_file(tiny_sd, tmp_path):
    del tiny_sd["visual.ln_post.bias"], tiny_sd["ln_final.weight"]
    path = write_safetensors(tiny_sd, tmp_path / "m.safetensors")
    msg = error_of(path)
    assert msg.startswith(f"checkpoint {path} does not match model 'tiny' (0 mis-shaped, 2 missing")
    assert "missing key ln_final.weight: expected shape (64,), found nothing" in msg
    assert "missing key visual.ln_post.bias: expected shape (64,), found nothing" in msg


def test_misshaped_key_names_the_file_key_and_both_shapes(tiny_sd, tmp_path):
    tiny_sd["visual.transformer.resblocks.1.attn.in_proj_weight"] = np.zeros((192, 32), np.float32)
    path = write_safetensors(tiny_sd, tmp_path / "m.safetensors")
    msg = error_of(path)
    assert msg.startswith(f"checkpoint {path} does not match model 'tiny' (1 mis-shaped, 0 missing")
    assert (
        "mis-shaped key visual.transformer.resblocks.1.attn.in_proj_weight: expected shape (192, 64), "
        "found shape (192, 32)"
    ) in msg


def test_first_missing_keys_show_beside_many_mis_shaped_ones(tiny_sd, tmp_path):
    # Every block key mis-shaped (a wider model) and one tower's final norm gone: the missing key is
    # still among the lines shown, and the header counts all.
    sd = {k: (np.zeros((v.shape[0] + 1, *v.shape[1:]), v.dtype) if ".resblocks." in k else v)
          for k, v in tiny_sd.items() if k != "ln_final.bias"}  # fmt: skip
    msg = error_of(write_safetensors(sd, tmp_path / "m.safetensors"))
    assert "(48 mis-shaped, 1 missing, 0 unexpected keys)" in msg
    assert "missing key ln_final.bias: expected shape (64,), found nothing" in msg
    assert "... and 29 more mis-shaped keys" in msg
    assert len(msg.splitlines()) == 1 + 19 + 1 + 1  # header, 19 + 1 shown, the count of the rest


def test_unreadable_config_json_is_named(tiny_sd, tmp_path):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 64,')
    path = write_safetensors(tiny_sd, tmp_path / "open_clip_model.safetensors")
    assert f"{tmp_path / 'open_clip_config.json'} is not valid JSON" in error_of(path, None)


def test_config_json_of_another_architecture_is_named(tiny_sd, tmp_path):
    (tmp_path / "open_clip_config.json").write_text(
        # A timm image tower: an architecture clip_jax does not build (ResNets it now does).
        json.dumps({"embed_dim": 64, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {}})
    )
    path = write_safetensors(tiny_sd, tmp_path / "open_clip_model.safetensors")
    msg = error_of(path, None)
    assert msg.startswith(f"{tmp_path / 'open_clip_config.json'}: ") and "timm_model_name" in msg


def test_uninferable_config_names_the_file(tiny_sd, tmp_path):
    del tiny_sd["visual.conv1.weight"]
    path = write_safetensors(tiny_sd, tmp_path / "m.safetensors")
    msg = error_of(path, None, quick_gelu=False)
    assert msg.startswith(f"{path}: cannot infer the model config") and "visual.conv1.weight" in msg


def test_orbax_params_mismatch_names_the_directory(tiny_params, tmp_path):
    from clip_jax import save_params

    directory = save_params(tmp_path / "ckpt", tiny_params, TINY)
    msg = error_of(directory, "ViT-B-32")
    assert msg.startswith(f"checkpoint {directory} does not match model 'ViT-B-32'")
