"""thresholds.json next to a checkpoint is shared by every eval of it: merges are read-modify-write under a lock,
so concurrent evals keep each other's entries; hand-written entries and foreign files are never replaced."""

import contextlib
import json
import multiprocessing
import time

from energy_cli.runs.thresholds import FORMAT, merge_beside_checkpoint, thresholds_document

SHA = "ab" * 32


def entry(value: float, sha: str = SHA) -> dict:
    return {"threshold": value, "id_tpr": 0.95, "n_id": 10, "temperature": 1.0, "checkpoint_sha256": sha,
            "eval_run": "/runs/x"}


def merge_one(args) -> None:
    """One eval's merge, in a process of its own. The merges start together at `start_at`, and each one waits
    0.05 s between reading the file and writing it back, so that merges of different processes overlap: without
    the lock, they would overwrite each other's entries."""
    from energy_cli.runs import thresholds

    path, name, start_at, locked = args
    write = thresholds.atomic_write_bytes

    def slow_write(target, data):
        time.sleep(0.05)
        write(target, data)

    thresholds.atomic_write_bytes = slow_write
    if not locked:
        thresholds.file_lock = lambda target: contextlib.nullcontext()
    time.sleep(max(0.0, start_at - time.time()))
    document = thresholds_document({name: entry(1.0)}, {"checkpoint": "c.pt", "checkpoint_sha256": SHA})
    merge_beside_checkpoint(path, document, SHA)


def merge_concurrently(path, names, locked: bool) -> list[str]:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        start_at = time.time() + 1.5      # every worker is up and waiting by then
        pool.map(merge_one, [(path, name, start_at, locked) for name in names], chunksize=1)
    return sorted(json.loads(path.read_text())["scores"])


def test_concurrent_merges_keep_every_entry(tmp_path):
    names = [f"score{i}" for i in range(12)]
    assert merge_concurrently(tmp_path / "thresholds.json", names, locked=True) == sorted(names)


def test_the_merges_overlap_so_that_without_the_lock_entries_are_lost(tmp_path):
    """The check on the test above: the same merges without the lock lose entries, so it can fail."""
    names = [f"score{i}" for i in range(12)]
    kept = merge_concurrently(tmp_path / "thresholds.json", names, locked=False)
    assert set(kept) < set(names)


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
