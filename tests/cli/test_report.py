"""energy-ood report PATH...: positional paths, gathering runs and sweeps, report.csv / report.md, heatmaps."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, own_checkpoint, read_csv, working_dir
from conftest import run_main as run
from PIL import Image

from energy_cli.cli import collect_paths, main
from energy_cli.reporting.gather import normalise, read_overrides
from energy_cli.runs.outputs import RESULT_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ODD_NAMES = ["plain", "with space", "x=1,2:3", "it's", "back\\slash\\", "${not.an.interpolation}", "[brackets]",
             "a\\${b}", "quote'and\\'more"]


def test_positional_paths_survive_hydra_quoting(compose, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ODD_NAMES:
        (tmp_path / name).mkdir()
    args = collect_paths("report", ["plots=false", *ODD_NAMES, "not-there"])
    assert args[0] == "plots=false" and args[-1].startswith("paths=[")
    cfg = compose("report", args)
    assert list(cfg.paths) == [*ODD_NAMES, "not-there"] and cfg.plots is False
    # Hydra flags keep their values; `--` makes the rest paths; an existing path with '=' is a path
    assert collect_paths("report", ["--cfg", "job", "-m", "x=1,2:3"]) == ["--cfg", "job", "-m", "paths=['x=1,2:3']"]
    assert collect_paths("score", ["ckpt=a.pt", "--", "ckpt=b.pt"]) == ["ckpt=a.pt", "paths=['ckpt=b.pt']"]
    assert collect_paths("eval", ["plain"]) == ["plain"]          # only report and score take paths
    with pytest.raises(Exception, match="not both"):
        collect_paths("report", ["plain", "paths=[a]"])


def test_normalise_and_overrides(tmp_path):
    assert [normalise(v) for v in ("-11", "-11.0", "1e-3", "0.001", "True", "auto", "[a,b]")] == [
        "-11", "-11", "0.001", "0.001", "true", "auto", "[a,b]"]
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- m_in=-11\n- +extra=1\n- ~gone\n- ckpt=a/b=c.pt\n")
    assert read_overrides(tmp_path) == {"m_in": "-11", "extra": "1", "ckpt": "a/b=c.pt"}


def test_report_on_empty_folder_says_so_in_one_line(cli, tmp_path):
    (tmp_path / "nothing here").mkdir()
    result = cli("report", "nothing here")
    assert result.code == 2
    assert result.err.strip() == ("energy-ood: error: no results.csv under nothing here: nothing to report "
                                  "(run `energy-ood eval` first, or name the folders that hold its runs)")
    assert not list(Path("outputs").glob("report/*"))           # no empty run folder left behind
    assert "no such file or folder: missing" in cli("report", "missing").err


@pytest.fixture(scope="module")
def sweeps(pretrained, tmp_path_factory):
    """A finetune sweep over m_out, its checkpoints evaluated by an eval sweep over temperature, and an
    eval sweep over seed of the pretrained model (draws of 100 OOD images)."""
    with working_dir(tmp_path_factory.mktemp("sweeps")) as root:
        ckpt = own_checkpoint(pretrained, root / "model")
        main(["finetune", "-m", f"ckpt={ckpt}", "m_out=-3,-5", "epochs=0", "hydra.sweep.dir=multirun/ft", *FAST])
        jobs = ",".join(f"multirun/ft/{i}/checkpoint.pt" for i in range(2))
        main(["eval", "-m", f"ckpt={jobs}", "temperature=1,2", "--ood", "gaussian,blobs", "hydra.sweep.dir=multirun/ev",
              *FAST])
        main(["eval", "-m", f"ckpt={ckpt}", "seed=0,1", "ood_samples=100", "--ood", "gaussian",
              "hydra.sweep.dir=multirun/seeds", *FAST])
    return root


def test_report_over_a_sweep_has_the_swept_keys_as_columns(sweeps, monkeypatch, capsys):
    monkeypatch.chdir(sweeps)
    assert run("report", "multirun/ev", "hydra.run.dir=rep") == 0
    out = capsys.readouterr().out
    assert "4 eval runs under multirun/ev; settings that vary: m_out, temperature" in out
    rows = read_csv(sweeps / "rep" / "report.csv")
    with open(sweeps / "rep" / "report.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["run", "epochs", "m_out", "precision", *RESULT_COLUMNS]   # FAST sets precision
    assert len(rows) == 4 * 2 * 3                                  # runs x scores x (2 sets + average)
    assert {(r["m_out"], r["temperature"]) for r in rows} == {("-3", "1"), ("-3", "2"), ("-5", "1"), ("-5", "2")}
    # every row is the eval run's own row, and m_out is the one its checkpoint was fine-tuned with
    for job in range(4):
        results = read_csv(sweeps / "multirun" / "ev" / str(job) / "results.csv")
        mine = [r for r in rows if r["run"] == f"multirun/ev/{job}"]
        assert [{c: r[c] for c in RESULT_COLUMNS} for r in mine] == results
        assert {r["m_out"] for r in mine} == {"-3" if "/ft/0/" in results[0]["checkpoint"] else "-5"}
    md = (sweeps / "rep" / "report.md").read_text()
    assert "## digits / small_cnn / stage energy / score energy" in md
    assert "| m_out | temperature | runs | FPR95 | AUROC | AUPR-In | AUPR-Out | ID acc |" in md
    average = {(r["m_out"], r["temperature"]): float(r["fpr95"]) for r in rows
               if r["score"] == "energy" and r["ood"] == "average"}
    assert f"| -5 | 2 | 1 | {average[('-5', '2')]:.2f} |" in md
    assert "| m_out | temperature | gaussian | blobs |" in md        # the per-set breakdown
    # two varying settings: a heatmap per stage and score
    for score in ("msp", "energy"):
        with Image.open(sweeps / "rep" / f"heatmap_energy_{score}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "![average FPR95 over m_out x temperature](heatmap_energy_energy.png)" in md


def test_report_aggregates_seeds_with_mean_and_std(sweeps, monkeypatch, capsys):
    monkeypatch.chdir(sweeps)
    assert run("report", "multirun/seeds", "plots=false", "hydra.run.dir=rep_seeds") == 0
    out = capsys.readouterr().out
    per_run = [read_csv(sweeps / "multirun" / "seeds" / str(i) / "results.csv") for i in range(2)]
    average = [next(r for r in rows if r["score"] == "energy" and r["ood"] == "average") for rows in per_run]
    fpr, auroc = ([float(r[m]) for r in average] for m in ("fpr95", "auroc"))
    assert len(set(auroc)) > 1                                     # the seeds draw different OOD subsets
    cells = [f"{np.mean(v):.2f} ± {np.std(v):.2f}" for v in (fpr, auroc)]
    md = (sweeps / "rep_seeds" / "report.md").read_text()
    assert "Seeds: 0, 1." in md and f"| 2 | {cells[0]} | {cells[1]} |" in md
    line = next(line for line in out.splitlines() if line.startswith("pretrain  energy"))
    assert line.split()[2] == "2" and f"{cells[0]}  {cells[1]}" in line
    assert {r["seed"] for r in read_csv(sweeps / "rep_seeds" / "report.csv")} == {"0", "1"}
    assert not list((sweeps / "rep_seeds").glob("*.png"))


def test_report_prints_the_paper_numbers_for_the_paper_recipe(tmp_path, monkeypatch, capsys):
    """A results.csv of the CIFAR-10 WRN-40-2 preset (written by hand): the paper's row and the differences."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "ev"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- experiment=cifar10_wrn\n")
    sets = ["textures", "svhn", "places365", "lsun_c", "lsun_r", "isun"]
    rows = [{"dataset": "cifar10", "backbone": "wrn40_2", "stage": "energy", "checkpoint": "gone.pt", "score": "energy",
             "temperature": 1, "ood": name, "n_id": 10000, "n_ood": 2000, "id_acc": 95.0, "fpr95": 5.0, "auroc": 98.0,
             "aupr_in": 99.5, "aupr_out": 97.0} for name in [*sets, "average"]]
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert run("report", "runs", "hydra.run.dir=rep") == 0
    out = capsys.readouterr().out
    assert "vs the paper, cifar10 / wrn40_2 / stage energy / score energy (preset experiment=cifar10_wrn)" in out
    assert "Energy fine-tune  FPR95 5.00 (paper 3.32, +1.68)  AUROC 98.00 (paper 98.92, -0.92)" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| all runs | Energy fine-tune | 5.00 | 3.32 | +1.68 | 98.00 | 98.92 | -0.92 | 99.50 | 99.75 | -0.25 |" in md
