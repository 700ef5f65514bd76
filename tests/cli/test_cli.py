"""End-to-end runs of the CLI on the embedded digits data, in a temporary folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, header, read_csv, working_dir

from energy_cli.cli import main
from energy_cli.ood.metrics import detection_metrics
from energy_cli.ood.scores import energy_score, msp_score
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.outputs import RESULT_COLUMNS, STD_COLUMNS, TRAIN_LOG_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def only_dir(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One folder with a 2-epoch pretraining run and a 1-epoch energy fine-tuning run on digits."""
    with working_dir(tmp_path_factory.mktemp("ws")) as root:
        main(["train", "epochs=2", *FAST])
        main(["finetune", "epochs=1", *FAST])
    return root


@pytest.mark.smoke
def test_train_writes_checkpoint_and_log(workspace):
    run = only_dir("outputs/train/*", workspace)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["stage"] == "pretrain" and ckpt["finished"] and ckpt["epoch"] == 2
    assert (ckpt["dataset"], ckpt["backbone"]["name"], ckpt["num_classes"]) == ("digits", "small_cnn", 10)
    assert (ckpt["in_channels"], ckpt["image_size"]) == (1, 8)
    assert {"optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert header(run / "train_log.csv") == TRAIN_LOG_COLUMNS
    log = read_csv(run / "train_log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2]
    assert float(log[1]["test_acc"]) > 0.5          # two epochs already learn digits
    assert float(log[1]["lr"]) < float(log[0]["lr"])  # cosine decay per step
    assert (run / ".hydra" / "config.yaml").is_file()


def test_finetune_starts_from_the_newest_pretraining_run(workspace):
    run = only_dir("outputs/finetune/*", workspace)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    pretrain = only_dir("outputs/train/*", workspace) / "checkpoint.pt"
    assert ckpt["stage"] == "energy" and ckpt["finished"]
    assert ckpt["extra"]["init_checkpoint"] == str(pretrain.resolve())
    assert (ckpt["extra"]["m_in"], ckpt["extra"]["m_out"]) == (-11.0, -5.0)
    assert header(run / "train_log.csv") == TRAIN_LOG_COLUMNS


def test_eval_results_match_recomputation_from_saved_scores(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    main(["eval", "save_scores=true", "hydra.run.dir=outputs/eval/full", *FAST])
    out = capsys.readouterr().out
    assert "run folder outputs/eval/full" in out and "AVERAGE" in out
    run = workspace / "outputs/eval/full"
    assert header(run / "results.csv") == RESULT_COLUMNS
    rows = read_csv(run / "results.csv")
    sets = ["flower_patches", "gaussian", "uniform", "rademacher", "blobs"]
    assert [(r["score"], r["ood"]) for r in rows] == [(s, o) for s in ("msp", "energy") for o in sets + ["average"]]
    finetuned = only_dir("outputs/finetune/*", workspace) / "checkpoint.pt"
    assert {r["stage"] for r in rows} == {"energy"} and {r["checkpoint"] for r in rows} == {str(finetuned.resolve())}
    scores = np.load(run / "scores.npz")
    logits = torch.from_numpy(scores["id/logits"])
    assert np.allclose(scores["id/energy"], energy_score(logits).numpy(), atol=1e-5)
    assert np.allclose(scores["id/msp"], msp_score(logits).numpy(), atol=1e-6)
    _, test = __import__("energy_cli.data.embedded", fromlist=["x"]).load_digits_split()
    acc = 100 * float((logits.argmax(1) == test.labels).float().mean())
    for row in rows:
        assert float(row["id_acc"]) == pytest.approx(acc, abs=1e-3)
        assert int(row["n_id"]) == 360
        if row["ood"] == "average":
            continue
        assert int(row["n_ood"]) == 1000
        want = detection_metrics(scores[f"id/{row['score']}"], scores[f"{row['ood']}/{row['score']}"])
        for metric, value in want.items():
            assert float(row[metric]) == pytest.approx(100 * value, abs=1e-3)
    for score in ("msp", "energy"):
        avg = next(r for r in rows if r["score"] == score and r["ood"] == "average")
        per_set = [float(r["fpr95"]) for r in rows if r["score"] == score and r["ood"] != "average"]
        assert float(avg["fpr95"]) == pytest.approx(np.mean(per_set), abs=1e-3)


def test_eval_ood_shorthand_and_repeated_draws(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    main(["eval", "--ood", "gaussian,uniform", "num_to_avg=3", "ood_samples=100", "score=all",
          "hydra.run.dir=outputs/eval/draws", *FAST])
    rows = read_csv(workspace / "outputs/eval/draws/results.csv")
    assert header(workspace / "outputs/eval/draws/results.csv") == RESULT_COLUMNS + STD_COLUMNS
    assert [(r["score"], r["ood"]) for r in rows] == [
        (s, o) for s in ("msp", "maxlogit", "energy", "odin", "mahalanobis") for o in ("gaussian", "uniform", "average")]
    assert {int(r["n_ood"]) for r in rows if r["ood"] != "average"} == {100}
    assert any(float(r["fpr95_std"]) > 0 for r in rows)   # different draws differ
    capsys.readouterr()


def test_eval_without_any_run_says_what_to_do(cli):
    result = cli("eval", *FAST)
    assert result.code == 2
    assert "no finished train or finetune run of dataset=digits backbone=small_cnn" in result.err
    assert "energy-ood train" in result.err and len(result.err.strip().splitlines()) == 1
    assert not Path("outputs").exists() or not any(Path("outputs").rglob("results.csv"))


def test_finetune_sweep_runs_two_jobs(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    main(["finetune", "-m", "m_out=-3,-5", "epochs=1", *FAST])
    capsys.readouterr()
    sweep = only_dir("multirun/finetune/*", workspace)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    m_outs = [load_checkpoint(job / "checkpoint.pt")["extra"]["m_out"] for job in jobs]
    assert m_outs == [-3.0, -5.0]


def test_two_runs_in_the_same_second_get_their_own_folders(workspace, monkeypatch, capsys):
    """The clock is frozen, so both runs ask for the same folder name: the second gets `_1`."""
    import energy_cli.runs.folders as folders_module

    monkeypatch.setattr(folders_module.time, "strftime", lambda fmt: "2026-01-01_00-00-00")
    monkeypatch.chdir(workspace)
    for _ in range(2):
        main(["eval", "--ood", "gaussian", *FAST])
    out = capsys.readouterr().out
    folders = [line.split("run folder ")[1] for line in out.splitlines() if "run folder " in line]
    assert folders == ["outputs/eval/2026-01-01_00-00-00", "outputs/eval/2026-01-01_00-00-00_1"]
    assert all((workspace / f / "results.csv").is_file() for f in folders)


@pytest.mark.parametrize("args,message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["train", "nosuchkey=1"], "unknown key 'nosuchkey'; see the keys with: energy-ood train --cfg job"),
    (["train", "dataset=mnist"], "dataset=mnist is not known; choose one of: cifar10, cifar100, digits"),
    (["train", "temperature=-1"], "temperature=-1 must be > 0"),
    (["eval", "--ood"], "--ood needs a comma-separated list"),
    (["finetune", "ckpt=missing.pt"], "checkpoint not found: missing.pt"),
])
def test_user_errors_are_one_line(cli, args, message):
    result = cli(*args, *FAST)
    assert result.code == 2, result
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err
    assert not list(Path.cwd().rglob("checkpoint.pt"))
    # a failed run leaves no empty run folder behind
    assert not [p for p in Path.cwd().glob("outputs/*/*") if p.is_dir()]


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("train", "finetune", "eval", "report", "score"):
        assert f"  {command} " in result.out


def test_command_help_lists_its_groups_and_config(cli):
    result = cli("train", "--help", "epochs=3")
    assert result.code == 0, result.err
    assert result.out.startswith("usage: energy-ood train ")
    assert "  dataset: cifar10, cifar100, digits, folder\n" in result.out
    assert "  loss:" not in result.out and "schema" not in result.out   # loss is finetune's; schemas are no group
    assert "\nepochs: 3\n" in result.out
    assert "  loss: energy, oe\n" in cli("finetune", "-h").out
    bad = cli("train", "--help", "epochs=abc")
    assert bad.code == 2 and bad.err.strip() == "energy-ood: error: epochs='abc' must be a whole number >= 0"


def test_hydra_cfg_flag_prints_the_config(cli):
    result = cli("finetune", "--cfg", "job", "m_in=-23")
    assert result.code == 0
    assert "m_in: -23" in result.out and "command: finetune" in result.out
    assert not Path("outputs").exists()


def test_console_entry_point_as_subprocess(cli_subprocess, tmp_path):
    result = cli_subprocess("train", "epochs=1", "hydra.run.dir=r", *FAST)
    assert result.code == 0, result.err
    assert "run folder r" in result.out
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
    bad = cli_subprocess("eval", "ckpt=r/checkpoint.pt", "ood=[mars]", *FAST)
    assert bad.code == 2 and "unknown OOD set 'mars'" in bad.err and "Traceback" not in bad.err


def test_a_users_own_config_file_can_extend_a_schema(cli, tmp_path):
    """A dataset file of one's own, added with --config-dir, gets the built-in types by naming the schema."""
    folder = tmp_path / "my_conf" / "dataset"
    folder.mkdir(parents=True)
    body = ("defaults: [/schema_dataset_base@_here_, _self_]\nname: cifar10\nnum_classes: 10\nchannels: 3\n"
            "image_size: {size}\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\nood: [gaussian]\n"
            "benchmark_ood: [gaussian]\nm_in: -23.0\nm_out: -5.0\nrecipe:\n"
            "  train: {{epochs: 1, lr: 0.1, batch_size: 8}}\n"
            "  finetune: {{epochs: 1, lr: 0.001, batch_size: 8, outlier_batch_size: 8}}\n")
    (folder / "mine.yaml").write_text(body.format(size=16))
    ok = cli("train", "--config-dir", str(tmp_path / "my_conf"), "dataset=mine", "--cfg", "job")
    assert ok.code == 0, ok.err
    assert "image_size: 16" in ok.out and "num_to_avg: 1" in ok.out   # the schema's default eval recipe
    (folder / "mine.yaml").write_text(body.format(size="big"))
    bad = cli("train", "--config-dir", str(tmp_path / "my_conf"), "dataset=mine", "--cfg", "job")
    assert bad.code == 2 and bad.err.strip() == "energy-ood: error: dataset.image_size='big' must be a whole number >= 1"
