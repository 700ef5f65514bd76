"""Commands that compute nothing (help, the composed config, shell completion, report) never import torch, so
they answer at once; checked in a fresh interpreter for each."""

import csv
import os
import subprocess
import sys

import pytest
from conftest import REPO

from energy_cli.runs.outputs import RESULT_COLUMNS

PROBE = """
import sys
from energy_cli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
sys.stderr.write(f"\\nEXIT {code} HEAVY {','.join(heavy) or '-'}\\n")
"""


def run_fresh(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    return proc, last


def write_results(folder):
    folder.mkdir(parents=True)
    row = {"dataset": "digits", "backbone": "small_cnn", "stage": "pretrain", "checkpoint": "gone.pt",
           "score": "energy", "temperature": 1, "ood": "gaussian", "n_id": 100, "n_ood": 100, "id_acc": 95.0,
           "fpr95": 5.0, "auroc": 98.0, "aupr_in": 99.5, "aupr_out": 97.0}
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows([row, {**row, "ood": "average"}])


@pytest.mark.smoke
@pytest.mark.parametrize("args", [
    ["--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["finetune", "--cfg", "job"],
    ["eval", "--cfg", "job", "precision=fp32"],
    ["train", "-sc", "install=bash"],
    ["report", "--help"],
    ["report", "runs", "hydra.run.dir=rep", "plots=false"],
])
def test_commands_that_compute_nothing_do_not_import_torch(args, tmp_path):
    write_results(tmp_path / "runs" / "ev")
    proc, last = run_fresh(args, tmp_path)
    assert last == "EXIT 0 HEAVY -", (args, proc.stderr[-2000:])
    if args[0] == "report" and "--help" not in args:
        assert (tmp_path / "rep" / "report.csv").is_file()
