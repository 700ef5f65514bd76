import os
import pickle

import pytest
import torch
from conftest import PicklePayload

from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes
from energy_cli.runs.checkpoint import (
    FORMAT,
    find_newest,
    load_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)


def test_save_and_load_roundtrip(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "stage": "pretrain", "config": {"a": [1, 2]}})
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["stage"] == "pretrain"
    assert torch.equal(ckpt["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]    # no temporary file left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.csv"
    atomic_write_bytes(path, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())   # the write itself fails
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["results.csv"]


def test_atomic_write_gives_the_usual_file_mode_and_leaves_no_temporary(tmp_path):
    from energy_cli.fileio import remove_stale_temporaries

    mask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "results.csv", b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o644    # not mkstemp's 0600
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")        # left by a killed writer
    assert remove_stale_temporaries(tmp_path) == [tmp_path / ".checkpoint.pt.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["results.csv"]


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(100)}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an energy-ood checkpoint"):
        load_checkpoint(foreign)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {}, "x": PicklePayload(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(PicklePayload(str(marker))))
    with pytest.raises(UserError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_strip_module_prefix():
    sd = {"module.fc.weight": 1, "_orig_mod.module.conv.bias": 2, "bn.weight": 3}
    assert strip_module_prefix(sd) == {"fc.weight": 1, "conv.bias": 2, "bn.weight": 3}


def test_find_newest_matching(tmp_path):
    a, b, c = (tmp_path / n / "checkpoint.pt" for n in ("a", "b", "c"))
    save_checkpoint(a, {"model": {}, "stage": "pretrain"})
    save_checkpoint(b, {"model": {}, "stage": "energy"})
    c.parent.mkdir()
    c.write_bytes(b"broken")
    now = 1_700_000_000
    os.utime(a, (now, now))
    os.utime(b, (now + 10, now + 10))
    os.utime(c, (now + 20, now + 20))
    assert find_newest([tmp_path], lambda k: True) == b
    assert find_newest([tmp_path], lambda k: k["stage"] == "pretrain") == a
    assert find_newest([tmp_path], lambda k: k["stage"] == "oe") is None
