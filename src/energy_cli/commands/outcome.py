"""What a command hands back: its own value, and the headline metric that Hydra sweepers optimise.

The Hydra task function returns the headline metric (a float, or None for commands without one), which is
what sweeper plugins such as Optuna's read as the objective: eval returns the average FPR95 of the energy
score (in percent; lower is better), train and finetune the final test accuracy (a fraction; higher is
better; finetune metric=val_energy_fpr95 instead returns the energy FPR95 on validation OOD data). Every
finished run of this process is recorded in `FINISHED` (folder, metric, value), which energy_cli.api reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """A command's result: `value` (train/finetune: the checkpoint path; eval: the results rows; report: the
    tables; score: the scored rows) and its headline metric with the metric's name (None when it has none)."""

    value: Any
    metric: float | None = None
    metric_name: str | None = None


@dataclass(frozen=True)
class Finished:
    """One finished run of this process: the command, its run folder and its Outcome."""

    command: str
    run_dir: Path
    outcome: Outcome


FINISHED: list[Finished] = []   # newest last; only the API reads it (a CLI process runs one command)


def eval_headline(rows: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """(average FPR95 of the energy score, "energy_fpr95") from eval's results rows; without energy, the
    first score's average FPR95 and its name."""
    averages = [r for r in rows if r.get("ood") == "average"]
    if not averages:
        return None, None
    chosen = next((r for r in averages if r.get("score") == "energy"), averages[0])
    return float(chosen["fpr95"]), f"{chosen['score']}_fpr95"
