"""Deployment thresholds: eval stores, per score, the threshold at 95% ID TPR in thresholds.json."""

import json

import numpy as np
import pytest
from conftest import FAST, own_checkpoint

from energy_cli.cli import main
from energy_cli.errors import UserError
from energy_cli.ood.metrics import fpr_at_tpr, threshold_at_tpr
from energy_cli.runs.thresholds import (
    read_thresholds,
    thresholds_document,
    write_thresholds,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_eval_stores_thresholds_in_the_run_and_next_to_the_checkpoint(pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    main(["eval", f"ckpt={ckpt}", "--ood", "gaussian,blobs", "save_scores=true", "hydra.run.dir=ev", *FAST])
    assert "thresholds at 95% ID TPR" in capsys.readouterr().out
    run, beside = read_thresholds(tmp_path / "ev" / "thresholds.json"), read_thresholds(tmp_path / "model" / "thresholds.json")
    assert run == beside
    assert run["checkpoint"] == str(ckpt.resolve()) and run["stage"] == "pretrain" and run["tpr"] == 0.95
    scores = np.load(tmp_path / "ev" / "scores.npz")
    assert set(run["scores"]) == {"msp", "energy"}
    for name, entry in run["scores"].items():
        id_scores = scores[f"id/{name}"]
        assert (entry["threshold"], entry["id_tpr"]) == threshold_at_tpr(id_scores)
        assert entry["id_tpr"] == pytest.approx(np.mean(id_scores >= entry["threshold"]))
        assert entry["id_tpr"] == pytest.approx(342 / 360)        # 360 ID test images: 342 accepted
        assert entry["n_id"] == 360 and entry["temperature"] == 1.0
        # at most the reported FPR95: the rule's point is the lowest threshold of the same ID recall
        for ood in ("gaussian", "blobs"):
            assert np.mean(scores[f"{ood}/{name}"] >= entry["threshold"]) <= fpr_at_tpr(id_scores, scores[f"{ood}/{name}"])

    # a later eval of another score adds its entry next to the checkpoint and keeps the others
    main(["eval", f"ckpt={ckpt}", "--ood", "gaussian", "score=[maxlogit]", "temperature=2", "hydra.run.dir=ev2", *FAST])
    capsys.readouterr()
    assert set(read_thresholds(tmp_path / "ev2" / "thresholds.json")["scores"]) == {"maxlogit"}
    merged = read_thresholds(tmp_path / "model" / "thresholds.json")
    assert set(merged["scores"]) == {"msp", "energy", "maxlogit"}
    assert merged["scores"]["energy"] == run["scores"]["energy"]
    assert not list((tmp_path / "model").glob(".*.tmp"))


def test_thresholds_file_round_trip_and_errors(tmp_path):
    doc = thresholds_document({"energy": {"threshold": 7.5, "id_tpr": 0.95, "n_id": 10, "temperature": 1.0}},
                              {"checkpoint": "c.pt"})
    write_thresholds(tmp_path / "thresholds.json", doc)
    assert read_thresholds(tmp_path / "thresholds.json")["scores"]["energy"]["threshold"] == 7.5
    with pytest.raises(UserError, match="run `energy-ood eval"):
        read_thresholds(tmp_path / "missing" / "thresholds.json")
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not an energy-ood thresholds file"):
        read_thresholds(tmp_path / "bad.json")
