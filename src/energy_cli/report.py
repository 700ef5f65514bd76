"""Gathering finished eval runs into one report: which results.csv files, with which settings, and the
tables `energy-ood report` writes (report.csv, report.md) and prints.

A run's settings are its Hydra overrides (`.hydra/overrides.yaml`), followed back along the checkpoint it
evaluated: the eval run's own overrides first, then those of the run that wrote the checkpoint (finetune
or train), then those of the run that checkpoint started from. A setting no run of the chain overrode is
read from the nearest run's resolved `.hydra/config.yaml`, so runs with and without an override of the
same value agree. Rows of runs that differ only in `seed` are aggregated: mean and (population) std.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from energy_cli import paper
from energy_cli.errors import UserError
from energy_cli.results import RESULT_COLUMNS, STD_COLUMNS

RESULTS_FILE = "results.csv"
# Overrides that say where or how fast, not what was measured; and keys results.csv already has as columns.
IGNORED_KEYS = {"ckpt", "paths", "progress", "plots", "save_scores", "eval_batch_size", "data_root", "download",
                "device", "chunk_size", "threshold"}
RESULT_KEYS = {"dataset", "backbone", "stage", "score", "ood", "temperature"}
SUMMARY_METRICS = [("fpr95", "FPR95"), ("auroc", "AUROC"), ("aupr_in", "AUPR-In"), ("aupr_out", "AUPR-Out"),
                   ("id_acc", "ID acc")]
STAGE_ORDER = ["pretrain", "energy", "oe"]
SCORE_ORDER = ["msp", "maxlogit", "odin", "mahalanobis", "energy"]


# --------------------------------------------------------------------------- reading runs

@dataclass
class Run:
    """One results.csv, its rows, and the settings of the run chain that produced it."""

    results: Path
    rows: list[dict[str, str]]
    chain: list[Path]                              # eval run folder, checkpoint's run folder, its start's
    overrides: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.results.parent


def normalise(value: Any) -> str:
    """A setting's value as text: numbers in one spelling (-11, -11.0 -> -11), booleans lower-case."""
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        number = float(text)
        return str(int(number)) if number.is_integer() and abs(number) < 1e15 else format(number, ".10g")
    return text


def find_results(paths: Sequence[str]) -> list[Path]:
    """Every results.csv under the given files and folders (sorted, no duplicates)."""
    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if not path.exists():
            raise UserError(f"no such file or folder: {item}")
        if path.is_file():
            found += [path] if path.name == RESULTS_FILE else []
        else:
            found += sorted(path.rglob(RESULTS_FILE))
    return list(dict.fromkeys(p.resolve() for p in found))


def read_overrides(folder: Path) -> dict[str, str]:
    """`<folder>/.hydra/overrides.yaml` as {key: value}; `+key=` / `++key=` count as `key=`, deletions are skipped."""
    import yaml

    path = folder / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        text = str(item)
        if "=" not in text or text.startswith("~"):
            continue
        key, value = text.split("=", 1)
        out[key.lstrip("+")] = value
    return out


@lru_cache(maxsize=None)
def _config(folder: Path):
    """The run's resolved-on-access `.hydra/config.yaml` (None when missing or unreadable)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(folder / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001 - a damaged record only loses the fill-in values
        return None


def config_value(folder: Path, key: str) -> str | None:
    from omegaconf import OmegaConf

    cfg = _config(folder)
    if cfg is None:
        return None
    try:
        value = OmegaConf.select(cfg, key, default=None)
    except Exception:  # noqa: BLE001 - interpolations that cannot be resolved here
        return None
    if value is None or OmegaConf.is_config(value):
        return None
    return normalise(value)


@lru_cache(maxsize=None)
def _start_checkpoint(checkpoint: Path) -> Path | None:
    """The checkpoint a fine-tuned checkpoint started from (its `extra.init_checkpoint`), if readable."""
    import torch

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        start = ckpt.get("extra", {}).get("init_checkpoint")
    except Exception:  # noqa: BLE001 - a moved or damaged checkpoint ends the chain
        return None
    return Path(start) if start else None


def run_chain(results: Path, rows: list[dict[str, str]]) -> list[Path]:
    """[the eval run's folder, the evaluated checkpoint's run folder, the folder of the checkpoint it started from]."""
    chain = [results.parent]
    checkpoint = Path(rows[0].get("checkpoint") or "") if rows else None
    for _ in range(2):
        if checkpoint is None or not checkpoint.is_file():
            break
        if checkpoint.parent not in chain:
            chain.append(checkpoint.parent)
        checkpoint = _start_checkpoint(checkpoint)
    return chain


def load_runs(paths: Sequence[str]) -> tuple[list[Run], list[str]]:
    """The runs under `paths`, and one note per results.csv that could not be used."""
    runs, skipped = [], []
    for results in find_results(paths):
        try:
            with open(results, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            skipped.append(f"{results}: {exc}")
            continue
        missing = [c for c in RESULT_COLUMNS if not rows or c not in rows[0]]
        if missing:
            skipped.append(f"{results}: " + ("empty" if not rows else f"no column {missing[0]}"))
            continue
        chain = run_chain(results, rows)
        overrides: dict[str, str] = {}
        for folder in reversed(chain):                      # nearest run last, so it wins
            overrides.update(read_overrides(folder))
        overrides = {k: normalise(v) for k, v in overrides.items()
                     if k not in IGNORED_KEYS and k not in RESULT_KEYS and not k.startswith("hydra")}
        runs.append(Run(results, rows, chain, overrides))
    return runs, skipped


def setting_columns(runs: list[Run]) -> list[str]:
    """Every key some run overrode, alphabetically with seed last; fills each run's `settings` with them
    (from the nearest run's resolved config where no run of its chain overrode the key) and its temperature."""
    keys = sorted({k for run in runs for k in run.overrides}, key=lambda k: (k == "seed", k))
    for run in runs:
        run.settings = {}
        for key in keys:
            value = run.overrides.get(key)
            if value is None:
                value = next((v for v in (config_value(f, key) for f in run.chain) if v is not None), "")
            run.settings[key] = value
        # the run's `temperature` key (the msp / odin rows carry the temperature those scores use instead)
        temperature = run.overrides.get("temperature")
        if temperature is None:
            temperature = next((v for v in (config_value(f, "temperature") for f in run.chain) if v is not None), "")
        run.settings["temperature"] = normalise(temperature)
    return keys


def varying(runs: Sequence[Run], keys: Iterable[str]) -> list[str]:
    """The keys among `keys` with more than one value across `runs`."""
    return [k for k in keys if len({run.settings.get(k, "") for run in runs}) > 1]


# --------------------------------------------------------------------------- tables

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


# --------------------------------------------------------------------------- text

def _label(keys: list[str], row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, row.key)) if keys else "all runs"


def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _preset_note(table: Table) -> str:
    presets = {run.settings.get("experiment", "") for row in table.rows for run in row.runs}
    want = paper.PRESETS.get(table.dataset)
    note = f"preset experiment={want}" if presets == {want} else "dataset and backbone of the paper's recipe"
    if set(table.sets) != set(paper.PAPER_OOD_SETS):
        have = len(set(table.sets) & set(paper.PAPER_OOD_SETS))
        note += f"; our average covers {len(table.sets)} sets ({have} of the paper's 6), the paper's all 6"
    return note


def comparison_lines(table: Table) -> list[list[str]]:
    """Per row: method, our value, the paper's, difference, for FPR95 / AUROC / AUPR-In / ID acc."""
    ref = table.reference()
    if ref is None:
        return []
    method, numbers = ref
    lines = []
    for row in table.rows:
        cells = [_label(table.keys, row), method]
        for m in ("fpr95", "auroc", "aupr_in", "id_acc"):
            ours = row.average[m].mean
            theirs = numbers.get(m)
            cells += [f"{ours:.2f}", "-" if theirs is None else f"{theirs:.2f}",
                      "-" if theirs is None else f"{ours - theirs:+.2f}"]
        lines.append(cells)
    return lines


COMPARISON_HEADER = ["row", "paper method", "FPR95", "paper", "diff", "AUROC", "paper", "diff", "AUPR-In", "paper",
                     "diff", "ID acc", "paper", "diff"]


def markdown(tables: list[Table], runs: list[Run], sources: list[str], pictures: dict[str, str]) -> str:
    """report.md: a short header, then per table the averages, the comparison with the paper (when it has
    the row) and the per-OOD-set breakdown."""
    lines = ["# energy-ood report", "",
             f"{len(runs)} eval runs (results.csv) under: {', '.join(f'`{s}`' for s in sources)}.",
             "All metrics in percent: FPR95 (lower is better), AUROC, AUPR-In, AUPR-Out (higher is better), ID "
             "accuracy; the first table of each section averages over the OOD sets. A row of several runs "
             "(seeds) shows mean ± std over the runs (population std).", ""]
    for table in tables:
        lines += [f"## {table.title}", "", f"OOD sets: {', '.join(table.sets)}."]
        if table.constant:
            lines.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in table.constant.items()) + ".")
        if len(table.seeds) > 1:
            lines.append(f"Seeds: {', '.join(table.seeds)}.")
        lines.append("")
        header = [*table.keys, "runs", *[name for _, name in SUMMARY_METRICS]]
        body = [[*row.key, str(len(row.runs)), *[row.average[m].text() for m, _ in SUMMARY_METRICS]]
                for row in table.rows]
        lines += _md_table(header, body) + [""]
        comparison = comparison_lines(table)
        if comparison:
            lines += [f"Against the paper ({paper.CITATION}, WRN-40-2, mean over its 6 OOD sets; "
                      f"{_preset_note(table)}; diff = ours - paper):", ""]
            lines += _md_table(COMPARISON_HEADER, comparison) + [""]
        for metric, name in (("fpr95", "FPR95"), ("auroc", "AUROC")):
            if not table.sets:
                break
            lines += [f"{name} per OOD set:", ""]
            body = [[*row.key, *[row.per_set[s][metric].text() for s in table.sets]] for row in table.rows]
            lines += _md_table([*table.keys, *table.sets], body) + [""]
        picture = pictures.get(table.title)
        if picture:
            lines += [f"![average FPR95 over {' x '.join(table.keys)}]({picture})", ""]
    return "\n".join(lines).rstrip() + "\n"


def console(tables: list[Table]) -> str:
    """The printed summary: one line per table row with the average metrics (the settings that vary in
    any table as columns), then the paper comparisons."""
    if not tables:
        return "(no results)"
    keys = list(dict.fromkeys(k for t in tables for k in t.keys))
    multi = len({(t.dataset, t.backbone) for t in tables}) > 1
    label_cols = (["data"] if multi else []) + ["stage", "score", *keys, "runs"]
    entries = []
    for table in tables:
        for row in table.rows:
            labels = ([f"{table.dataset}/{table.backbone}"] if multi else []) + [table.stage, table.score]
            labels += [row.runs[0].settings.get(k, "") for k in keys] + [str(len(row.runs))]
            entries.append((labels, [row.average[m].text() for m, _ in SUMMARY_METRICS]))
    widths = [max(len(c), *(len(lab[i]) for lab, _ in entries)) for i, c in enumerate(label_cols)]
    mwidths = [max(len(name), *(len(vals[i]) for _, vals in entries)) for i, (_, name) in enumerate(SUMMARY_METRICS)]
    head = "  ".join(c.ljust(w) for c, w in zip(label_cols, widths)) + "  " + "  ".join(
        name.rjust(w) for (_, name), w in zip(SUMMARY_METRICS, mwidths))
    out = [head, "-" * len(head)]
    previous = None
    for labels, vals in entries:
        group = labels[:len(label_cols) - len(keys) - (1 if keys else 2)]   # data, stage (and score if keys)
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append("  ".join(v.ljust(w) for v, w in zip(labels, widths)) + "  " + "  ".join(
            v.rjust(w) for v, w in zip(vals, mwidths)))
    out.append("(mean over the OOD sets, percent; FPR95: lower is better; rows of several runs: mean ± std)")
    for table in tables:
        comparison = comparison_lines(table)
        if not comparison:
            continue
        out.append(f"vs the paper, {table.title} ({_preset_note(table)}):")
        for cells in comparison:
            out.append(f"  {cells[0]}: {cells[1]}  FPR95 {cells[2]} (paper {cells[3]}, {cells[4]})  AUROC {cells[5]} "
                       f"(paper {cells[6]}, {cells[7]})  AUPR-In {cells[8]} (paper {cells[9]}, {cells[10]})  ID acc "
                       f"{cells[11]} (paper {cells[12]}, {cells[13]})")
    return "\n".join(out)


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
