"""Shared fixtures: composing configs, and running the CLI in-process in a temporary folder."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Small, fast settings for end-to-end runs on the embedded digits data.
FAST = ["progress=false", "precision=fp32"]


class PicklePayload:
    """Unpickling this creates the file `marker`: the proof that code from a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
@pytest.fixture(scope="session", autouse=True)
def _user_cache_in_tmp(tmp_path_factory):
    """The probe's per-machine cache (engine.probe) goes to a folder of this test session, never the user's
    ~/.cache; subprocesses inherit it through the environment."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@dataclass
class Result:
    code: int
    out: str
    err: str


def composed_as_the_cli_does(compose_it):
    """compose_it(), with a value refused by its key's type turned into the CLI's one-line UserError."""
    from energy_cli.config.schema import type_error_line
    from energy_cli.errors import UserError

    try:
        return compose_it()
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a refused value
        line = type_error_line(exc)
        if line is None:
            raise
        raise UserError(line) from exc


@pytest.fixture
def compose():
    """compose(command, overrides) -> the command's composed config (no Hydra run). A value its key's type
    refuses raises the UserError the CLI shows for it (config.schema.type_error_line)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from energy_cli.config.paths import config_dir

    def _compose(command: str, overrides=()):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return composed_as_the_cli_does(lambda: hydra_compose(config_name=command, overrides=list(overrides)))

    return _compose


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*args) runs `energy-ood *args` in-process with the current folder set to tmp_path."""
    from energy_cli.cli import main

    monkeypatch.chdir(tmp_path)

    def _run(*args: str) -> Result:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


@pytest.fixture
def cli_subprocess(tmp_path):
    """cli_subprocess(*args) runs `python -m energy_cli *args` as a separate process in tmp_path."""

    def _run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> Result:
        full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "energy_cli", *args], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return _run


def run_main(*args: str) -> int:
    """`energy-ood *args` in-process; its exit status."""
    from energy_cli.cli import main

    try:
        main(list(args))
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


@contextlib.contextmanager
def working_dir(path: Path):
    """Run the body with `path` as the current folder (for fixtures wider than one test)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def header(path: Path) -> list[str]:
    with open(path) as f:
        return f.readline().strip().split(",")


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A checkpoint.pt of a 2-epoch pretraining run on digits (made once per session). Tests that write next
    to a checkpoint (thresholds.json) copy it into their own folder first: see `own_checkpoint`."""
    from energy_cli.cli import main

    root = tmp_path_factory.mktemp("pretrained")
    main(["train", "epochs=2", f"hydra.run.dir={root / 'train'}", *FAST])
    return root / "train" / "checkpoint.pt"


def own_checkpoint(source: Path, folder: Path) -> Path:
    """A private copy of a checkpoint in `folder` (created)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(source, folder / "checkpoint.pt"))


def pytest_collection_modifyitems(config, items):
    """Tests under tests/cli/ run whole commands: they belong to the slow tier unless marked `smoke`."""
    for item in items:
        if "/tests/cli/" in str(item.path).replace("\\", "/") and item.get_closest_marker("smoke") is None:
            item.add_marker(pytest.mark.slow)
