"""thresholds.json: the deployment thresholds `eval` measures and `score` uses.

One entry per detection score: accept an input as in-distribution when score(x) >= threshold (the threshold
at 95% ID true-positive rate on the ID test set, `ood.metrics.threshold_at_tpr`). `eval` writes the file into
its run folder and next to the checkpoint it evaluated. No threshold is computed here.

    {"format": "energy-ood-thresholds/1", "checkpoint": ..., "checkpoint_sha256": ..., "dataset": ...,
     "backbone": ..., "stage": ..., "tpr": 0.95,
     "scores": {"energy": {"threshold": 7.41, "id_tpr": 0.95, "n_id": 360, "temperature": 1.0,
                           "checkpoint_sha256": ..., "eval_run": ...}, "msp": {...}}}

Provenance: every entry `eval` writes records the sha256 of the checkpoint bytes that produced its scores
and the temperature its score used; `score` refuses an entry of other bytes (a resumed or overwritten run,
another checkpoint in the same folder) or of another temperature (`stored_entry`).

The file next to a checkpoint is shared by every eval of it: `merge_beside_checkpoint` reads, merges and
writes it under a lock (runs/locks.py), so concurrent evals keep each other's entries. It keeps the entries
of the same checkpoint bytes, drops those of other bytes, and never replaces what a person wrote: an entry
without `eval_run` is a hand-written one and stays; a file that is not in this format is left alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes
from energy_cli.runs.locks import file_lock

FORMAT = "energy-ood-thresholds/1"
FILENAME = "thresholds.json"
INT8_FILENAME = "thresholds_int8.json"   # next to a checkpoint: the thresholds of its int8 evals (precision=int8)
TPR = 0.95


def thresholds_document(entries: Mapping[str, Mapping[str, Any]], header: Mapping[str, Any]) -> dict[str, Any]:
    """The file's content: the header (checkpoint, its sha256, dataset, backbone, stage), the TPR level, one
    entry per score."""
    return {"format": FORMAT, **header, "tpr": TPR, "rule": "in-distribution when score >= threshold",
            "scores": {name: dict(entry) for name, entry in entries.items()}}


def _encode(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def write_thresholds(path: Path, document: Mapping[str, Any]) -> None:
    """Write `document` to `path` atomically (a file of this run alone)."""
    atomic_write_bytes(Path(path), _encode(document))


def is_hand_written(entry: Any) -> bool:
    """An entry `eval` did not write (eval's entries carry `eval_run`)."""
    return not isinstance(entry, dict) or "eval_run" not in entry


def merge_beside_checkpoint(path: Path, document: Mapping[str, Any], checkpoint_sha256: str) -> list[str]:
    """Merge `document` into the shared thresholds.json at `path` under its lock (read, merge, write back)
    and return notes for the user. Kept: hand-written entries (also over a score of `document`), and the
    entries of other scores measured on the same checkpoint bytes; dropped: entries of other bytes. A file
    that is not an energy-ood thresholds file is left as it is. OSError when the folder is not writable."""
    path = Path(path)
    notes: list[str] = []
    with file_lock(path):
        old: Any = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
            if not (isinstance(old, dict) and old.get("format") == FORMAT and isinstance(old.get("scores"), dict)):
                return [f"left {path} as it is: it was not written by energy-ood eval (move it away to let eval "
                        "store the thresholds there)"]
        scores: dict[str, Any] = {}
        hand, dropped = [], []
        for name, entry in (old or {}).get("scores", {}).items():
            if is_hand_written(entry):
                scores[name] = entry
                hand.append(name)
            elif entry.get("checkpoint_sha256") == checkpoint_sha256:
                scores[name] = entry
            else:
                dropped.append(name)
        for name, entry in document["scores"].items():
            if name not in hand:
                scores[name] = dict(entry)
        if dropped:
            notes.append(f"replaced the thresholds of another checkpoint in {path} ({', '.join(dropped)})")
        kept = [n for n in hand if n in document["scores"]]
        if kept:
            notes.append(f"kept the hand-written {', '.join(kept)} entr{'y' if len(kept) == 1 else 'ies'} of {path}")
        atomic_write_bytes(path, _encode({**document, "scores": scores}))
    return notes


def read_thresholds(path: Path) -> dict[str, Any]:
    """Read a thresholds.json; a missing or foreign file ends with a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no {FILENAME} at {path.parent}: run `energy-ood eval ckpt=...` on this checkpoint first "
                        "(it stores the thresholds), or pass threshold=VALUE")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); rerun `energy-ood eval` to rewrite it") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("scores"), dict):
        raise UserError(f"{path} is not an energy-ood thresholds file; rerun `energy-ood eval` to rewrite it")
    return document


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def stored_entry(document: Mapping[str, Any], score: str, checkpoint_sha256: str, temperature: float,
                 path: Path, rerun: str) -> tuple[float, dict[str, Any]]:
    """The threshold of `score` in a read thresholds document, checked against the checkpoint bytes and the
    temperature in use; `rerun` is the eval command that measures it again. Returns (threshold, entry).
    A hand-written entry (no `eval_run`) is taken as given, at temperature 1 unless it names one."""
    entry = document["scores"].get(score)
    if entry is None:
        raise UserError(f"{path} holds no {score} threshold: run `{rerun}` first, or pass threshold=VALUE")
    if not isinstance(entry, dict) or _number(entry.get("threshold")) is None:
        raise UserError(f"the {score} entry of {path} has no finite number as threshold; fix it, run `{rerun}` "
                        "again, or pass threshold=VALUE")
    if not is_hand_written(entry) and entry.get("checkpoint_sha256") != checkpoint_sha256:
        raise UserError(f"the {score} threshold in {path} was measured on other checkpoint bytes (the run was "
                        f"resumed or overwritten, or it belongs to another file there): run `{rerun}` again, or "
                        "pass threshold=VALUE")
    stored = entry.get("temperature", 1.0)
    stored = 1.0 if stored is None else _number(stored)
    if stored is None:
        raise UserError(f"the {score} entry of {path} has a temperature that is not a number; fix it, or run "
                        f"`{rerun}` again")
    if stored != temperature:
        raise UserError(f"the stored {score} threshold was measured at temperature={stored:g}, not {temperature:g}: "
                        f"run `{rerun} temperature={temperature:g}` again, pass temperature={stored:g}, or "
                        "threshold=VALUE")
    return float(entry["threshold"]), entry
