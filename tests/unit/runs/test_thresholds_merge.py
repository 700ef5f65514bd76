"""thresholds.json next to a checkpoint is shared by every eval of it: merges are read-modify-write under a lock,
so concurrent evals keep each other's entries; hand-written entries and foreign files are never replaced."""

import json
import multiprocessing

from energy_cli.runs.thresholds import FORMAT, merge_beside_checkpoint, thresholds_document

SHA = "ab" * 32


def entry(value: float, sha: str = SHA) -> dict:
    return {"threshold": value, "id_tpr": 0.95, "n_id": 10, "temperature": 1.0, "checkpoint_sha256": sha,
            "eval_run": "/runs/x"}


def merge_one(args) -> None:
    path, name = args
    document = thresholds_document({name: entry(1.0)}, {"checkpoint": "c.pt", "checkpoint_sha256": SHA})
    merge_beside_checkpoint(path, document, SHA)


def test_concurrent_merges_keep_every_entry(tmp_path):
    path = tmp_path / "thresholds.json"
    names = [f"score{i}" for i in range(16)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(merge_one, [(path, name) for name in names])
    assert sorted(json.loads(path.read_text())["scores"]) == sorted(names)


def test_hand_written_entries_stay_and_other_bytes_are_replaced(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"format": FORMAT, "scores": {"energy": {"threshold": 7.5},
                                                             "msp": entry(0.3, sha="cd" * 32)}}))
    document = thresholds_document({"energy": entry(2.0), "msp": entry(0.5)},
                                   {"checkpoint": "c.pt", "checkpoint_sha256": SHA})
    notes = merge_beside_checkpoint(path, document, SHA)
    scores = json.loads(path.read_text())["scores"]
    assert scores["energy"] == {"threshold": 7.5} and scores["msp"]["threshold"] == 0.5
    assert any("hand-written energy" in n for n in notes) and any("another checkpoint" in n for n in notes)


def test_a_foreign_file_is_left_alone(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text("my own notes")
    notes = merge_beside_checkpoint(path, thresholds_document({"energy": entry(2.0)}, {"checkpoint_sha256": SHA}), SHA)
    assert path.read_text() == "my own notes" and notes[0].startswith("left ")
