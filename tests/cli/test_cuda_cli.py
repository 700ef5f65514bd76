"""The commands on a CUDA GPU end to end (run by scripts/gpu_check.sh; skipped where there is no GPU)."""

from pathlib import Path

import pytest
import torch
from conftest import read_csv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_train_and_eval_on_the_gpu_with_auto_precision(cli):
    assert cli("train", "epochs=2", "device=cuda", "progress=false", "hydra.run.dir=train").code == 0
    result = cli("eval", "ckpt=train/checkpoint.pt", "device=cuda", "progress=false", "hydra.run.dir=ev")
    assert result.code == 0, result.err
    rows = read_csv(Path("ev/results.csv"))
    assert rows and all(0 <= float(r["auroc"]) <= 100 for r in rows)
    assert float(rows[0]["id_acc"]) > 50          # two epochs on digits learn something


def test_eval_with_compile_on_the_gpu(cli):
    assert cli("train", "epochs=1", "device=cuda", "progress=false", "hydra.run.dir=train").code == 0
    result = cli("eval", "ckpt=train/checkpoint.pt", "device=cuda", "compile=true", "progress=false",
                 "hydra.run.dir=ev")
    assert result.code == 0, result.err
    assert Path("ev/results.csv").is_file()


def test_finetune_on_the_gpu_replays_its_steps_as_cuda_graphs(cli, caplog):
    """The energy loss over ID images and outliers in one batch, captured and replayed (cuda_graphs=auto)."""
    import logging

    assert cli("train", "epochs=1", "device=cuda", "progress=false", "hydra.run.dir=train").code == 0
    with caplog.at_level(logging.INFO):
        result = cli("finetune", "ckpt=train/checkpoint.pt", "epochs=2", "device=cuda", "progress=false",
                     "hydra.run.dir=ft")
    assert result.code == 0, result.err
    said = caplog.text + result.out + result.err
    assert "CUDA graph capture failed" not in said
    rows = read_csv(Path("ft/train_log.csv"))
    assert len(rows) == 2 and all(float(r["loss"]) == float(r["loss"]) for r in rows)   # finite, not NaN
