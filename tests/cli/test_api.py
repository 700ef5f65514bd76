"""energy_cli.api end to end: evaluate() on a checkpoint gives the rows of `energy-ood eval`'s results.csv;
train / finetune / eval in-process return their run folder and headline metric; an Optuna search of the
margins (conf/hparams_search/margins.yaml) optimises the metric finetune returns."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST, own_checkpoint, read_csv, working_dir

from energy_cli import api
from energy_cli.data import embedded, synthetic
from energy_cli.engine import winograd
from energy_cli.errors import UserError
from energy_cli.runs.outputs import RESULT_COLUMNS, csv_bytes


def test_evaluate_rows_equal_the_cli_results(pretrained, tmp_path):
    ckpt = own_checkpoint(pretrained, tmp_path / "ckpt")
    with working_dir(tmp_path):
        # channels_last=false, winograd=false: api.evaluate computes in contiguous memory with the direct
        # convolutions by default; the command's auto picks either where the probe says so, and its logits then
        # differ in the last bits (an AUROC moved by 0.0003 with channels_last on an Intel Xeon with AMX, a kNN
        # AUROC by 0.0003 with Winograd convolutions on an AMD EPYC)
        run = api.eval(f"ckpt={ckpt}", "ood=[gaussian,uniform]", "score=[msp,energy,mahalanobis,knn]",
                       "hydra.run.dir=ev", "channels_last=false", "winograd=false", *FAST)
    assert run.metric_name == "energy_fpr95" and run.folder.name == "ev" and run.value[0]["score"] == "msp"
    cli_rows = read_csv(tmp_path / "ev" / "results.csv")
    train, test = embedded.load_digits_split()
    shape = test.shape
    oods = {name: getattr(synthetic, name)(1000, shape, 0).images for name in ("gaussian", "uniform")}
    rows = api.evaluate(ckpt, (test.images, test.labels), oods, scores=["msp", "energy", "mahalanobis", "knn"],
                        train_data=(train.images, train.labels), device="cpu", as_frame=False)
    mine = csv_bytes(rows, RESULT_COLUMNS).decode().splitlines()[1:]
    theirs = [",".join(r[c] for c in RESULT_COLUMNS) for r in cli_rows]
    assert mine == theirs
    energy_average = next(r for r in cli_rows if r["score"] == "energy" and r["ood"] == "average")
    assert run.metric == pytest.approx(float(energy_average["fpr95"]), rel=1e-5)


def test_evaluate_with_winograd_rows_equal_the_cli_s(pretrained, tmp_path, capsys):
    if not winograd.available():
        pytest.skip(f"no Winograd kernels here: {winograd.why_unavailable()}")
    ckpt = own_checkpoint(pretrained, tmp_path / "ckpt")
    with working_dir(tmp_path):
        api.eval(f"ckpt={ckpt}", "ood=[gaussian]", "score=[energy,knn]", "hydra.run.dir=ev",
                 "channels_last=false", "winograd=true", *FAST)
    assert "cpu fp32, Winograd convolutions" in capsys.readouterr().out
    train, test = embedded.load_digits_split()
    noise = synthetic.gaussian(1000, test.shape, 0).images
    rows = api.evaluate(ckpt, (test.images, test.labels), {"gaussian": noise}, scores=["energy", "knn"],
                        train_data=(train.images, train.labels), device="cpu", winograd=True, as_frame=False)
    mine = csv_bytes(rows, RESULT_COLUMNS).decode().splitlines()[1:]
    assert mine == [",".join(r[c] for c in RESULT_COLUMNS) for r in read_csv(tmp_path / "ev" / "results.csv")]


def test_evaluate_refuses_winograd_where_it_cannot_run(pretrained, tmp_path):
    with pytest.raises(UserError, match="winograd=true runs on a CPU in fp32"):
        api.evaluate(pretrained, np.zeros((4, 1, 8, 8), np.float32), {"noise": np.ones((4, 1, 8, 8), np.float32)},
                     precision="bf16", device="cpu", winograd=True)


def test_train_and_finetune_return_their_folder_and_test_accuracy(tmp_path):
    with working_dir(tmp_path):
        trained = api.train(epochs=1, progress=False, precision="fp32", **{"hydra.run.dir": "tr"})
        log = read_csv(tmp_path / "tr" / "train_log.csv")
        assert trained.metric_name == "test_acc" and trained.metric == pytest.approx(float(log[-1]["test_acc"]), rel=1e-5)
        assert trained.checkpoint.is_file() and trained.value == trained.checkpoint
        tuned = api.finetune(ckpt=trained.checkpoint, epochs=1, m_in=-12, m_out=-4, metric="val_energy_fpr95",
                             progress=False, precision="fp32", hydra__run__dir="ft")
        assert tuned.metric_name == "val_energy_fpr95" and 0 <= tuned.metric <= 100
        assert tuned.folder.name == "ft" and (tmp_path / "ft" / "checkpoint.pt").is_file()


def test_a_failing_command_raises_with_its_one_line(tmp_path):
    with working_dir(tmp_path), pytest.raises(api.CommandFailed, match="unknown OOD set 'mars'") as failed:
        api.eval(ckpt="missing.pt", ood=["mars"], progress=False)
    assert failed.value.status == 2


def test_the_margins_search_minimises_the_validation_fpr95(pretrained, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with working_dir(tmp_path):
        from conftest import run_main

        code = run_main("finetune", "-m", "hparams_search=margins", "hydra.sweeper.n_trials=3", "epochs=1",
                        f"ckpt={pretrained}", "hydra.sweep.dir=search", *FAST)
    assert code == 0
    found = {}
    for log in sorted((tmp_path / "search").glob("*/*.log")):
        text = log.read_text()
        metric = re.search(r"headline metric: val_energy_fpr95 = (\S+)", text)
        margins = re.search(r"m_in (-?[\d.]+), m_out (-?[\d.]+)", text)
        found[(float(margins.group(1)), float(margins.group(2)))] = float(metric.group(1))
    assert len(found) == 3 and all(m_in < m_out for m_in, m_out in found)
    best = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(found.values()), rel=1e-5)
    assert found[(best["best_params"]["m_in"], best["best_params"]["m_out"])] == pytest.approx(best["best_value"], rel=1e-5)
