"""Plain weight files for ckpt=PATH: torch state_dicts (also wrapped) and .safetensors, read without running
code; energy-ood checkpoints still read as checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors_writer import save_safetensors

from energy_cli.errors import UserError
from energy_cli.runs.checkpoint import DIGEST_KEY, file_digest, save_checkpoint
from energy_cli.runs.weights import read_checkpoint_or_weights, read_safetensors

TENSORS = {"a.weight": torch.randn(3, 4), "a.bias": torch.arange(5), "half": torch.randn(2, 2).half(),
           "bf": torch.randn(3).to(torch.bfloat16), "empty": torch.zeros(0, 3), "flag": torch.tensor(True)}


@pytest.mark.parametrize("use_package", [False, True])
def test_safetensors_round_trip(tmp_path, use_package):
    if use_package:
        pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_safetensors(TENSORS, path, use_package=use_package)
    loaded = read_checkpoint_or_weights(path)
    assert loaded.checkpoint is None and loaded.digest == file_digest(path)
    assert set(loaded.weights) == set(TENSORS)
    for name, tensor in TENSORS.items():
        assert loaded.weights[name].dtype == tensor.dtype and torch.equal(loaded.weights[name], tensor), name


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_state_dicts_plain_or_wrapped(tmp_path, wrap):
    sd = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    path = tmp_path / "w.pth"
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    loaded = read_checkpoint_or_weights(path)
    assert loaded.checkpoint is None and sorted(loaded.weights) == ["b", "w"]


def test_energy_ood_checkpoints_still_read_as_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "stage": "pretrain"})
    loaded = read_checkpoint_or_weights(path)
    assert loaded.weights is None and loaded.checkpoint["stage"] == "pretrain"
    assert loaded.checkpoint[DIGEST_KEY] == file_digest(path)


def test_bad_weight_files_are_one_line(tmp_path):
    cases = {}
    torch.save({"w": torch.ones(2), "note": "text"}, tmp_path / "mixed.pt")
    cases["mixed.pt"] = "nor a state_dict of tensors"
    torch.save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pt")
    cases["nan.pt"] = "NaN or infinite weights (w)"
    save_safetensors({"w": torch.ones(4)}, tmp_path / "cut.safetensors", use_package=False)
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    cases["cut.safetensors"] = "does not match its data_offsets"
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    cases["junk.safetensors"] = "its header is not JSON"
    cases["missing.pt"] = "checkpoint not found"
    for name, message in cases.items():
        with pytest.raises(UserError, match=re.escape(message)) as info:
            read_checkpoint_or_weights(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_safetensors_header_length_beyond_the_file():
    with pytest.raises(UserError, match="exceeds the file"):
        read_safetensors(b"\xff" * 8 + b"{}", "x.safetensors")
