"""Writing what a run produces: results.csv, train_log.csv, scores.npz, and the table printed on screen.

All writes are atomic (a temporary file renamed over the target). No metric is computed here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from energy_cli.runs.files import atomic_write_bytes

RESULT_COLUMNS = ["dataset", "backbone", "stage", "checkpoint", "score", "temperature", "ood", "n_id", "n_ood",
                  "id_acc", "fpr95", "auroc", "aupr_in", "aupr_out"]
STD_COLUMNS = ["fpr95_std", "auroc_std", "aupr_in_std", "aupr_out_std"]
TRAIN_LOG_COLUMNS = ["epoch", "loss", "train_acc", "test_acc", "lr", "seconds"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return str(value)


def csv_bytes(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    return out.getvalue().encode()


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    atomic_write_bytes(Path(path), csv_bytes(rows, columns))


def write_results(path: Path, rows: Sequence[Mapping[str, Any]], with_std: bool) -> None:
    """results.csv: the contract's columns in order, the _std columns when there were repeated draws."""
    write_csv(path, rows, RESULT_COLUMNS + (STD_COLUMNS if with_std else []))


def write_train_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    write_csv(path, history, TRAIN_LOG_COLUMNS)


def write_scores(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """scores.npz with arrays named `<set>/<score>` and `<set>/logits`."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(Path(path), buffer.getvalue())


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as a fixed-width table, one block per score, the `average` row last in each block."""
    if not rows:
        return "(no results)"
    with_std = "fpr95_std" in rows[0]
    head = f"{'score':<12}{'T':>6}  {'ood':<16}{'n_ood':>7}{'FPR95':>9}{'AUROC':>9}{'AUPR-In':>9}{'AUPR-Out':>10}"
    lines = []
    first = rows[0]
    lines.append(f"{first['dataset']} / {first['backbone']} / stage {first['stage']}  |  ID accuracy "
                 f"{first['id_acc']:.2f}%  on {first['n_id']} ID test images")
    lines.append(head + ("   (mean ± std over draws)" if with_std else ""))
    lines.append("-" * len(head))
    previous = None
    for r in rows:
        if previous is not None and r["score"] != previous:
            lines.append("")
        previous = r["score"]
        name = r["ood"] if r["ood"] != "average" else "AVERAGE"
        cells = [f"{r[m]:>9.2f}" if m != "aupr_out" else f"{r[m]:>10.2f}" for m in ("fpr95", "auroc", "aupr_in", "aupr_out")]
        t = "-" if r.get("temperature") is None else f"{r['temperature']:g}"
        line = f"{r['score']:<12}{t:>6}  {name:<16}{r['n_ood']:>7}" + "".join(cells)
        if with_std:
            line += f"   ±{r['fpr95_std']:.2f} / ±{r['auroc_std']:.2f}"
        lines.append(line)
    lines.append("FPR95: lower is better; AUROC, AUPR: higher is better (percent; ID = positive class). "
                 "T: the temperature the score applies (-: none).")
    return "\n".join(lines)
