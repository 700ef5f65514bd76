"""Gathering finished eval runs: which results.csv files, and each run's settings.

A run's settings are its Hydra overrides (`.hydra/overrides.yaml`), followed back along the checkpoint it
evaluated: the eval run's own overrides first, then those of the run that wrote the checkpoint (finetune
or train), then those of the run that checkpoint started from. A setting no run of the chain overrode is
read from the nearest run's resolved `.hydra/config.yaml`, so runs with and without an override of the
same value agree."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from energy_cli.config.overrides import key_of, raw_value_of
from energy_cli.errors import UserError
from energy_cli.runs.outputs import RESULT_COLUMNS

RESULTS_FILE = "results.csv"


# Overrides that say where or how fast, not what was measured; and keys results.csv already has as columns.
IGNORED_KEYS = {"ckpt", "paths", "progress", "plots", "save_scores", "eval_batch_size", "data_root", "download",
                "device", "chunk_size", "threshold"}


RESULT_KEYS = {"dataset", "backbone", "stage", "score", "ood", "temperature"}


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
        out[key_of(text)] = raw_value_of(text)
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


NUMERIC_COLUMNS = ("n_id", "n_ood", "id_acc", "fpr95", "auroc", "aupr_in", "aupr_out")


def malformed(rows: list[dict[str, str]]) -> str | None:
    """Why the rows of a results.csv cannot be reported (a short row, or a metric cell that is not a number),
    or None when they can."""
    for line, row in enumerate(rows, start=2):
        short = [c for c in RESULT_COLUMNS if row.get(c) is None]
        if short or None in row:
            return f"line {line} has {'too few' if short else 'too many'} cells"
        for column in NUMERIC_COLUMNS:
            try:
                float(row[column])
            except ValueError:
                return f"line {line}: {column}={row[column]!r} is not a number"
    return None


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
        why = malformed(rows)
        if why is not None:
            skipped.append(f"{results}: {why}")
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
