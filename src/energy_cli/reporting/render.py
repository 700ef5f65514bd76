"""Rendering report tables: report.md (markdown, with the paper's numbers beside ours) and the console summary."""

from __future__ import annotations

from energy_cli.reporting import paper
from energy_cli.reporting.gather import Run
from energy_cli.reporting.tables import SUMMARY_METRICS, Table, _label


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
