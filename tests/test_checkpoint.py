"""Checkpoint loading: official layout, strictness, tied keys, hashes and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
network = pytest.importorskip("da3stream.core.network", reason="network module not available")

from safetensors.torch import load_file, save_file  # noqa: E402

from da3stream.core.checkpoint import (  # noqa: E402
    CONFIG_NAME,
    WEIGHTS_NAME,
    file_sha256,
    hub_id_for,
    load_checkpoint,
    load_into,
    read_model_name,
    resolve_checkpoint_dir,
    save_checkpoint,
    state_dict_sha256,
    tied_groups,
)
from da3stream.errors import CheckpointError  # noqa: E402

TIED_PREFIX = "head.scratch.output_conv2_aux."


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return network.build_network("small").eval()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory, small_net):
    return save_checkpoint(small_net, tmp_path_factory.mktemp("ckpt") / "da3-small", "da3-small")


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_official_layout(small_ckpt, small_net):
    tensors = load_file(str(small_ckpt / WEIGHTS_NAME))
    assert all(k.startswith("model.") for k in tensors)
    assert json.loads((small_ckpt / CONFIG_NAME).read_text()) == {"model_name": "da3-small"}
    net, info = load_checkpoint(small_ckpt)
    _assert_same_weights(net, small_net)
    assert not net.training
    assert info.preset == "small" and info.model_name == "da3-small"
    assert info.weights_random is False
    assert info.weights_sha256 == file_sha256(small_ckpt / WEIGHTS_NAME)
    assert len(info.weights_sha256) == 64
    assert info.model_id == f"da3-small:{small_ckpt.name}"
    # a path to the safetensors file itself is accepted
    net2, _ = load_checkpoint(small_ckpt / WEIGHTS_NAME)
    _assert_same_weights(net2, small_net)


def test_tied_aux_layernorm_is_one_module(small_net):
    groups = tied_groups(small_net.state_dict())
    tied = [g for g in groups if g[0].startswith(TIED_PREFIX)]
    assert len(tied) == 2, groups  # weight and bias, each shared by 4 levels
    assert all(len(g) == 4 for g in tied)


def test_tied_keys_level0_only_loads(tmp_path, small_net):
    d = save_checkpoint(small_net, tmp_path / "first", "da3-small", tied="first")
    keys = load_file(str(d / WEIGHTS_NAME)).keys()
    assert "model.head.scratch.output_conv2_aux.0.2.weight" in keys
    assert "model.head.scratch.output_conv2_aux.3.2.weight" not in keys
    net, _ = load_checkpoint(d)
    _assert_same_weights(net, small_net)


def test_tied_keys_differing_copies_rejected(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    tensors = load_file(str(d / WEIGHTS_NAME))
    key = "model.head.scratch.output_conv2_aux.2.2.weight"
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert "tied keys" in _one_line(exc) and "output_conv2_aux" in str(exc.value)


def test_state_dict_hash_is_stable_and_sensitive(small_net):
    sd = small_net.state_dict()
    h1 = state_dict_sha256(sd)
    assert h1 == state_dict_sha256({k: v.clone() for k, v in sd.items()})
    changed = dict(sd)
    k = next(iter(sd))
    changed[k] = sd[k].clone().add_(1e-3)
    assert state_dict_sha256(changed) != h1


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "nope" / "ckpt")
    assert "not found" in _one_line(exc) and "ckpt" in str(exc.value)


def test_missing_config(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    (d / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert CONFIG_NAME in _one_line(exc) and "missing" in str(exc.value)


def test_missing_safetensors(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert WEIGHTS_NAME in _one_line(exc) and "missing" in str(exc.value)


@pytest.mark.parametrize("config", [{"model_name": "da3-huge"}, {"name": "x"}, "not json {"])
def test_unknown_or_absent_model_name(tmp_path, small_ckpt, config):
    d = _copy(small_ckpt, tmp_path)
    (d / CONFIG_NAME).write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert CONFIG_NAME in _one_line(exc)


def test_embedded_config_and_aliases(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    (d / CONFIG_NAME).write_text(json.dumps({"config": {"model_name": "da3-small"}}))
    assert read_model_name(d) == "da3-small"
    assert hub_id_for("da3-large") == "depth-anything/DA3-LARGE"
    assert hub_id_for("large") == "depth-anything/DA3-LARGE"
    assert hub_id_for("depth-anything/DA3-SMALL") == "depth-anything/DA3-SMALL"
    assert hub_id_for("a/b/c") is None


def test_unexpected_key(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    tensors = load_file(str(d / WEIGHTS_NAME))
    tensors["model.head.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    msg = _one_line(exc)
    assert "unexpected key 'model.head.extra.weight'" in msg and WEIGHTS_NAME in msg


def test_unprefixed_keys_are_unexpected(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    tensors = {k[len("model."):]: v for k, v in load_file(str(d / WEIGHTS_NAME)).items()}
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_checkpoint(d)


def test_missing_key(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    tensors = load_file(str(d / WEIGHTS_NAME))
    key = "model.cam_dec.fc_qvec.weight"
    assert key in tensors
    del tensors[key]
    save_file(tensors, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    msg = _one_line(exc)
    assert f"missing key '{key}'" in msg and WEIGHTS_NAME in msg


def test_other_preset_weights_shape_mismatch(tmp_path, small_ckpt):
    d = _copy(small_ckpt, tmp_path)
    (d / CONFIG_NAME).write_text(json.dumps({"model_name": "da3-base"}))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    msg = _one_line(exc)
    assert "shape mismatch for key 'model." in msg and "da3-base expects" in msg
    assert "384" in msg and "768" in msg and WEIGHTS_NAME in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file(tmp_path, small_ckpt, damage):
    d = _copy(small_ckpt, tmp_path)
    path = d / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    msg = _one_line(exc)
    assert str(path) in msg and "corrupt" in msg


def test_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as exc:
        resolve_checkpoint_dir("depth-anything/DA3-LARGE")
    msg = _one_line(exc)
    assert "depth-anything/DA3-LARGE" in msg and "offline" in msg
    assert "--local-dir" in msg and "--model DIR" in msg


def test_load_into_generic_module_names_key_and_source():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            shared = torch.nn.LayerNorm(4)
            self.a = torch.nn.Sequential(torch.nn.Linear(4, 4), shared)
            self.b = torch.nn.Sequential(torch.nn.Linear(4, 4), shared)

    src, dst = Tiny(), Tiny()
    tensors = {"model." + k: v.clone() + 1 for k, v in src.state_dict().items() if not k.startswith("b.1.")}
    load_into(dst, tensors, "mem://tiny")
    assert torch.equal(dst.b[1].weight, src.a[1].weight + 1)
    bad = dict(tensors)
    bad["model.a.0.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError, match=r"mem://tiny: shape mismatch for key 'model.a.0.weight': file \(5, 4\)"):
        load_into(dst, bad, "mem://tiny")
