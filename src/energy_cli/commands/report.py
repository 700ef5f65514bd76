"""energy-ood report PATH...: gather every results.csv under the paths (runs and sweeps) into report.csv
(every row, with each run's settings as columns) and report.md (a table per stage and score, seeds
aggregated, the paper's numbers beside ours where it has them, the per-OOD-set breakdown); prints the
summary; draws a heatmap per table when the runs vary exactly two settings."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from energy_cli.config.overrides import as_list
from energy_cli.errors import UserError
from energy_cli.reporting import gather, render
from energy_cli.reporting import tables as report_tables
from energy_cli.runs.files import atomic_write_bytes, file_part
from energy_cli.runs.folders import RUN_ROOT, SWEEP_ROOT, display_path
from energy_cli.runs.outputs import write_csv


def draw_heatmaps(tables: list[report_tables.Table], run_dir: Path) -> dict[str, str]:
    """heatmap_<...>.png of the average FPR95 over the two varying settings, per table that has them."""
    grids = [(t, report_tables.heatmap_grid(t)) for t in tables]
    grids = [(t, g) for t, g in grids if g is not None]
    if not grids:
        return {}
    from energy_cli.reporting import plots

    multi = len({(t.dataset, t.backbone) for t, _ in grids}) > 1
    written = {}
    for table, (grid, rows, cols) in grids:
        parts = ([table.dataset, table.backbone] if multi else []) + [table.stage, table.score]
        if len({t.sets for t, _ in grids if (t.stage, t.score) == (table.stage, table.score)}) > 1:
            parts.append(f"{len(table.sets)}sets")
        name = "heatmap_" + "_".join(file_part(p) for p in parts) + ".png"
        plots.heatmap(run_dir / name, grid, rows, cols, table.keys[0], table.keys[1],
                      f"{table.title}\naverage FPR95 over the OOD sets")
        written[table.title] = name
    return written


def run(cfg: DictConfig, run_dir: Path) -> list[report_tables.Table]:
    sources = as_list(cfg.paths)
    if not sources:
        sources = [p for p in (RUN_ROOT, SWEEP_ROOT) if Path(p).is_dir()]
        if not sources:
            raise UserError(f"no results to report: no {RUN_ROOT}/ or {SWEEP_ROOT}/ folder here; "
                            "name the runs: energy-ood report PATH...")
    runs, skipped = gather.load_runs(sources)
    for note in skipped:
        print(f"skipped {note}")
    if not runs:
        raise UserError(f"no results.csv under {', '.join(sources)}: nothing to report "
                        "(run `energy-ood eval` first, or name the folders that hold its runs)")
    columns = gather.setting_columns(runs)
    tables = report_tables.build_tables(runs)
    varying = list(dict.fromkeys(k for t in tables for k in t.keys + (["seed"] if len(t.seeds) > 1 else [])))
    print(f"{len(runs)} eval runs under {', '.join(sources)}"
          + (f"; settings that vary: {', '.join(varying)}" if varying else ""))

    rows, csv_columns = report_tables.report_rows(runs, columns, display_path)
    write_csv(run_dir / "report.csv", rows, csv_columns)
    pictures = draw_heatmaps(tables, run_dir) if cfg.plots else {}
    text = render.markdown(tables, runs, sources, pictures)
    atomic_write_bytes(run_dir / "report.md", text.encode())
    print(render.console(tables))
    written = ["report.csv", "report.md", *pictures.values()]
    print(f"wrote {', '.join(display_path(run_dir / name) for name in written)}")
    return tables
