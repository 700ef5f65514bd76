"""thresholds.json: the deployment thresholds `eval` measures and `score` uses.

One entry per detection score: accept an input as in-distribution when score(x) >= threshold (the threshold
at 95% ID true-positive rate on the ID test set, `metrics.threshold_at_tpr`). `eval` writes the file into
its run folder and next to the checkpoint it evaluated; there it merges with the entries of earlier evals
(another score, another temperature for the energy score). Writes are atomic. No threshold is computed here.

    {"format": "energy-ood-thresholds/1", "checkpoint": ..., "dataset": ..., "backbone": ..., "stage": ...,
     "tpr": 0.95, "scores": {"energy": {"threshold": 7.41, "id_tpr": 0.95, "n_id": 360, "temperature": 1.0,
                                       "eval_run": ...}, "msp": {...}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from energy_cli.errors import UserError
from energy_cli.runs.files import atomic_write_bytes

FORMAT = "energy-ood-thresholds/1"
FILENAME = "thresholds.json"
TPR = 0.95


def thresholds_document(entries: Mapping[str, Mapping[str, Any]], header: Mapping[str, Any]) -> dict[str, Any]:
    """The file's content: the header (checkpoint, dataset, backbone, stage), the TPR level, one entry per score."""
    return {"format": FORMAT, **header, "tpr": TPR, "rule": "in-distribution when score >= threshold",
            "scores": {name: dict(entry) for name, entry in entries.items()}}


def write_thresholds(path: Path, document: Mapping[str, Any], merge: bool = False) -> None:
    """Write `document` to `path` atomically; with merge=True keep the entries an existing file holds for
    scores the new document does not mention."""
    document = dict(document)
    if merge and Path(path).is_file():
        try:
            old = read_thresholds(path)
        except UserError:
            old = {"scores": {}}
        document["scores"] = {**old.get("scores", {}), **document["scores"]}
    atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode())


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
