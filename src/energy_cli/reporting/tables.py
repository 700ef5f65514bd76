"""The report's tables: one per stage and score, a row per setting; rows of runs that differ only in `seed`
are aggregated (mean and population std)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from energy_cli.reporting import paper
from energy_cli.reporting.gather import Run, varying
from energy_cli.runs.outputs import RESULT_COLUMNS, STD_COLUMNS

SUMMARY_METRICS = [("fpr95", "FPR95"), ("auroc", "AUROC"), ("aupr_in", "AUPR-In"), ("aupr_out", "AUPR-Out"),
                   ("id_acc", "ID acc")]


STAGE_ORDER = ["pretrain", "energy", "oe"]


# the paper's scores in its tables' order, then the energy family after it (detectors.EXTENDED_NAMES)
SCORE_ORDER = ["msp", "maxlogit", "odin", "mahalanobis", "energy", "react", "dice", "ash", "knn", "vim", "gen"]


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _rank(value: str, order: list[str]) -> int:
    return order.index(value) if value in order else len(order)


@dataclass
class Cell:
    """Mean and (population) std over the runs of one row of a table."""

    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values)) if len(self.values) > 1 else math.nan

    def text(self, digits: int = 2) -> str:
        if not self.values:
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if len(self.values) > 1 else "")


@dataclass
class Row:
    """One line of a table: a combination of the varying settings, and the runs that have it."""

    key: tuple[str, ...]
    runs: list[Run]
    average: dict[str, Cell]                       # metric -> cell, from the runs' `average` rows
    per_set: dict[str, dict[str, Cell]]            # OOD set -> metric -> cell


@dataclass
class Table:
    """All results of one dataset, backbone, stage, score and list of OOD sets."""

    dataset: str
    backbone: str
    stage: str
    score: str
    sets: tuple[str, ...]
    keys: list[str]                                # the settings that vary within the table (not seed): row labels
    constant: dict[str, str]                       # the settings that do not (set ones only)
    seeds: list[str]                               # the seeds of its runs
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.backbone} / stage {self.stage} / score {self.score}"

    def reference(self) -> tuple[str, dict[str, float]] | None:
        return paper.reference(self.dataset, self.backbone, self.stage, self.score)


def build_tables(runs: list[Run]) -> list[Table]:
    """Group the runs' rows by (dataset, backbone, stage, score, OOD sets); within a group, by the values of
    the settings that vary there (seed excluded: runs that differ only in seed share a row)."""
    groups: dict[tuple, list[tuple[Run, list[dict[str, str]]]]] = {}
    for run in runs:
        by_score: dict[str, list[dict[str, str]]] = {}
        for r in run.rows:
            by_score.setdefault(r["score"], []).append(r)
        for score, rows in by_score.items():
            first = rows[0]
            sets = tuple(r["ood"] for r in rows if r["ood"] != "average")
            groups.setdefault((first["dataset"], first["backbone"], first["stage"], score, sets), []).append((run, rows))

    def table_order(key):
        dataset, backbone, stage, score, sets = key
        return (dataset, backbone, _rank(stage, STAGE_ORDER), stage, _rank(score, SCORE_ORDER), score, sets)

    tables = []
    for table_key in sorted(groups, key=table_order):
        members = groups[table_key]
        table_runs = [run for run, _ in members]
        all_keys = list(table_runs[0].settings)
        keys = [k for k in varying(table_runs, all_keys) if k != "seed"]
        constant = {k: table_runs[0].settings[k] for k in all_keys
                    if k not in keys and k != "seed" and k not in varying(table_runs, [k]) and table_runs[0].settings[k]}
        seeds = sorted({run.settings.get("seed", "") for run in table_runs} - {""}, key=_sort_key)
        by_row: dict[tuple[str, ...], list[tuple[Run, list[dict[str, str]]]]] = {}
        for run, rows in members:
            by_row.setdefault(tuple(run.settings.get(k, "") for k in keys), []).append((run, rows))
        table_rows = []
        for row_key in sorted(by_row, key=lambda k: tuple(_sort_key(v) for v in k)):
            average: dict[str, Cell] = {m: Cell([]) for m, _ in SUMMARY_METRICS}
            per_set: dict[str, dict[str, Cell]] = {s: {"fpr95": Cell([]), "auroc": Cell([])} for s in table_key[4]}
            for _, score_rows in by_row[row_key]:
                for r in score_rows:
                    if r["ood"] == "average":
                        for m, _ in SUMMARY_METRICS:
                            average[m].values.append(float(r[m]))
                    else:
                        for m in ("fpr95", "auroc"):
                            per_set[r["ood"]][m].values.append(float(r[m]))
            table_rows.append(Row(row_key, [run for run, _ in by_row[row_key]], average, per_set))
        tables.append(Table(*table_key, keys=keys, constant=constant, seeds=seeds, rows=table_rows))
    return tables


def report_rows(runs: list[Run], keys: list[str], display) -> tuple[list[dict[str, Any]], list[str]]:
    """report.csv: every gathered row, with the run folder and the settings in front. Returns (rows, columns)."""
    with_std = any("fpr95_std" in run.rows[0] for run in runs)
    columns = ["run", *keys, *RESULT_COLUMNS, *(STD_COLUMNS if with_std else [])]
    out = []
    for run in runs:
        for r in run.rows:
            out.append({"run": display(run.folder), **{k: run.settings.get(k, "") for k in keys},
                        **{c: r.get(c, "") for c in RESULT_COLUMNS + (STD_COLUMNS if with_std else [])}})
    return out, columns


def _label(keys: list[str], row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, row.key)) if keys else "all runs"


def heatmap_grid(table: Table) -> tuple[np.ndarray, list[str], list[str]] | None:
    """The mean average FPR95 on a grid of the table's two varying settings (rows: the first), or None when
    the table does not vary exactly two settings over at least two values each."""
    if len(table.keys) != 2:
        return None
    rows = sorted({r.key[0] for r in table.rows}, key=_sort_key)
    cols = sorted({r.key[1] for r in table.rows}, key=_sort_key)
    if len(rows) < 2 or len(cols) < 2:
        return None
    grid = np.full((len(rows), len(cols)), np.nan)
    for r in table.rows:
        grid[rows.index(r.key[0]), cols.index(r.key[1])] = r.average["fpr95"].mean
    return grid, rows, cols
