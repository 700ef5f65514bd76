"""Crash recovery through the CLI: a run killed with SIGKILL or stopped with SIGTERM, then resumed, ends with
exactly the weights and train_log rows of an uninterrupted run; NaN losses stop cleanly; same seed, same files."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, PicklePayload, read_csv

from energy_cli.config.overrides import quote as hydra_quote
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.resume import config_differences

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# 4 epochs x 23 steps of 64 digits, a narrow CNN with dropout (so the global torch RNG matters).
SMALL = ["epochs=4", "backbone.width=8", "backbone.dropout=0.3", "batch_size=64", "seed=3", *FAST]
STEPS = 4 * 23
# the same at the default precision (bf16 autocast on CPUs with AMX, fp32 elsewhere)
SMALL_DEFAULT = [a for a in SMALL if not a.startswith("precision=")]


@pytest.fixture
def one_thread():
    """Subprocesses run with OMP_NUM_THREADS=1; in-process runs use one thread too, so that every run
    does its float sums in the same order (and the tests stay fast on busy machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SIGNAL_AT_CALL = """
import os, sys
import energy_cli.engine.loop as loop
from energy_cli.cli import main
signum, n = int(sys.argv[1]), int(sys.argv[2])
real, calls = loop.random_crop_flip, [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signum)
    return real(*args, **kwargs)
loop.random_crop_flip = wrapped
main(sys.argv[3:])
"""


def run_signalled(tmp_path: Path, signum: int, at_call: int, *args: str) -> subprocess.CompletedProcess:
    """Run `energy-ood *args` as a separate process that sends itself `signum` during the `at_call`-th
    augmentation call of the training loop (one per step of `train`): a deterministic SIGKILL or SIGTERM at a
    known step, received by the real process and its real handlers."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_CALL, str(int(signum)), str(at_call), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    """Equal weights (bit for bit), optimiser state and train_log rows (the seconds column aside)."""
    wa, wb = weights(a / "checkpoint.pt"), weights(b / "checkpoint.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    oa, ob = load_checkpoint(a / "checkpoint.pt")["optimizer"], load_checkpoint(b / "checkpoint.pt")["optimizer"]
    assert all(torch.equal(oa["state"][i]["momentum_buffer"], ob["state"][i]["momentum_buffer"]) for i in oa["state"])
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(p / "train_log.csv")] for p in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_sigkill_then_resume_true_equals_an_uninterrupted_run(cli, tmp_path, one_thread):
    proc = run_signalled(tmp_path, signal.SIGKILL, 27, "train", *SMALL, "checkpoint_every_steps=1")
    assert proc.returncode == -signal.SIGKILL                       # no chance to clean up
    (ckpt,) = tmp_path.glob("outputs/train/*/checkpoint.pt")
    killed = load_checkpoint(ckpt)
    assert not killed["finished"] and killed["step"] == 26         # the last step saved before the 27th
    # an interrupted run with another config is not picked up
    other = cli("train", *SMALL, "epochs=5", "resume=true")
    assert other.code == 2 and "no interrupted `train` run with this config" in other.err
    # checkpoint_every_steps is not part of what must match; resume=true finds the killed run
    resumed = cli("train", *SMALL, "resume=true")
    assert resumed.code == 0, resumed.err
    assert f"run folder {ckpt.parent.relative_to(tmp_path)}" in resumed.out
    assert f"at epoch {killed['epoch'] + 1}, step {killed['step']}" in resumed.out
    final = load_checkpoint(ckpt)
    assert final["finished"] and final["step"] == STEPS
    assert final["resumes"][0]["step"] == killed["step"]
    assert [p.name for p in tmp_path.glob("outputs/train/*")] == [ckpt.parent.name]   # no second run folder
    assert not list(ckpt.parent.glob(".*.tmp"))
    reference = cli("train", *SMALL, "hydra.run.dir=reference")
    assert reference.code == 0, reference.err
    assert_same_run(tmp_path / "reference", ckpt.parent)


def test_sigterm_saves_and_prints_the_command_that_resumes(cli, tmp_path, one_thread):
    proc = run_signalled(tmp_path, signal.SIGTERM, 30, "train", *SMALL_DEFAULT, "hydra.run.dir=run")
    err = proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    saved = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert not saved["finished"] and saved["step"] == 30             # the step in flight finishes, then it saves
    assert f"at step {saved['step']}; saved run/checkpoint.pt" in err
    command = err.strip().splitlines()[-1].split("resume with: ")[1]
    assert command == "energy-ood train resume=run/checkpoint.pt"
    resumed = cli(*shlex.split(command)[1:])                     # the printed command, as typed
    assert resumed.code == 0, resumed.err
    assert "run folder run" in resumed.out
    assert cli("train", *SMALL_DEFAULT, "hydra.run.dir=reference").code == 0
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    # a resumed run keeps its settings: a finished run cannot be resumed, nor with other settings
    again = cli("train", "resume=run")
    assert again.code == 2 and "that run finished (epoch 4 of 4); nothing to resume" in again.err


@contextlib.contextmanager
def interrupt_at_call(n: int, signum: int = signal.SIGINT):
    """Send `signum` to this process during the n-th augmentation call of the training loop (one or two
    per step): a deterministic Ctrl-C in the middle of an epoch, handled by the real signal handler."""
    import energy_cli.engine.loop as engine

    real, calls = engine.random_crop_flip, {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "random_crop_flip", wrapped)
        yield


@contextlib.contextmanager
def locked_by_another_process(folder):
    """Hold `folder`'s run lock from a child process (locks are re-entrant within one process)."""
    code = ("import sys, time; from pathlib import Path; from energy_cli.runs.locks import acquire; "
            "acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert child.stdout.readline().strip() == "locked"
        yield
    finally:
        child.kill()
        child.wait()


def test_ctrl_c_then_resume_keeps_the_settings_and_refuses_a_running_run(cli, tmp_path, one_thread):
    with interrupt_at_call(30):
        stopped = cli("train", *SMALL, "hydra.run.dir=run")
    assert stopped.code == 130, stopped.err
    assert "stopped by SIGINT in epoch 2 at step 30; saved run/checkpoint.pt" in stopped.err
    assert "resume with: energy-ood train resume=run/checkpoint.pt" in stopped.err
    assert load_checkpoint(tmp_path / "run/checkpoint.pt")["loop"]["batch"] == 30 - 23
    assert [r["epoch"] for r in read_csv(tmp_path / "run/train_log.csv")] == ["1"]
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"}
    changed = cli("train", "resume=run/checkpoint.pt", "lr=0.5")
    assert changed.code == 2, changed.out[-600:] + changed.err
    assert "the interrupted run has lr=0.1, this command lr=0.5; a resumed run keeps its settings" in changed.err
    assert cli("finetune", "resume=run/checkpoint.pt").err.count("resume it with: energy-ood train resume=") == 1
    assert cli("train", "resume=run", "hydra.run.dir=elsewhere").code == 2
    assert cli("train", "resume=run", "-m").code == 2
    with locked_by_another_process(tmp_path / "run"):             # as if the run were still going
        busy = cli("train", "resume=run")
        assert busy.code == 2 and "still running" in busy.err
        assert cli("train", *SMALL, "resume=true").code == 2      # a running run is never picked up
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"} == before
    # device, precision, progress and the save interval may change on resume
    resumed = cli("train", "resume=run", "checkpoint_every_steps=0", "device=cpu")
    assert resumed.code == 0, resumed.err
    assert cli("train", *SMALL, "hydra.run.dir=reference").code == 0
    assert_same_run(tmp_path / "reference", tmp_path / "run")


def test_finetune_resumes_from_its_own_checkpoint(cli, tmp_path, one_thread):
    tiny = ["batch_size=64", *FAST]
    assert cli("train", "epochs=1", "backbone.width=8", "backbone.dropout=0.3", *tiny, "hydra.run.dir=pre").code == 0
    # the backbone's options come from the starting checkpoint (width 8, dropout 0.3), not the defaults
    ft = ["finetune", "epochs=2", "ckpt=pre/checkpoint.pt", "outlier_batch_size=64", *tiny]
    with interrupt_at_call(2 * 30 + 1):                         # two augmentations per step: ID and outliers
        assert cli(*ft, "hydra.run.dir=ft").code == 130
    stopped = load_checkpoint(tmp_path / "ft/checkpoint.pt")
    assert not stopped["finished"] and stopped["step"] == 31
    assert cli("finetune", "resume=ft").code == 0
    assert cli(*ft, "hydra.run.dir=reference").code == 0
    wa, wb = weights(tmp_path / "reference/checkpoint.pt"), weights(tmp_path / "ft/checkpoint.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    final = load_checkpoint(tmp_path / "ft/checkpoint.pt")
    assert final["extra"]["init_checkpoint"] == str((tmp_path / "pre/checkpoint.pt").resolve())
    assert final["backbone"] == {"name": "small_cnn", "width": 8, "dropout": 0.3}
    assert cli("eval", "ckpt=ft/checkpoint.pt", "--ood", "gaussian", *FAST, "hydra.run.dir=ev").code == 0


def test_resume_auto_starts_a_new_run_when_there_is_nothing_to_resume(cli, tmp_path):
    result = cli("train", "epochs=0", "backbone.width=8", *FAST, "resume=auto")
    assert result.code == 0, result.err
    assert "no interrupted run with this config to resume; starting a new run" in result.out
    assert len(list(tmp_path.glob("outputs/train/*/checkpoint.pt"))) == 1


def test_a_loss_that_turns_nan_stops_the_run_and_keeps_the_last_good_checkpoint(cli, tmp_path, one_thread):
    result = cli("train", "epochs=2", "lr=1e30", "checkpoint_every_steps=1", "backbone.width=8", *FAST,
                 "hydra.run.dir=run")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "the training loss became nan in epoch 1 (by step 2)" in result.err
    assert "the last good checkpoint, run/checkpoint.pt (step 1), stays" in result.err
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 1 and not ckpt["finished"]
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values() if w.is_floating_point())
    # without step saves there is nothing to keep, and the message says so
    bare = cli("train", "epochs=1", "lr=1e30", "backbone.width=8", *FAST)
    assert bare.code == 2 and "no checkpoint was saved" in bare.err
    assert not list(tmp_path.glob("outputs/train/*"))         # the failed run left no folder behind


def test_same_seed_same_checkpoint_and_results_csv(cli, tmp_path, one_thread):
    args = ["epochs=2", "backbone.width=8", "backbone.dropout=0.3", "batch_size=64", "progress=false"]  # default precision
    for name in ("a", "b"):
        assert cli("train", *args, f"hydra.run.dir={name}").code == 0
    wa, wb = weights(tmp_path / "a/checkpoint.pt"), weights(tmp_path / "b/checkpoint.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    evals = ["--ood", "gaussian,blobs", "num_to_avg=3", "ood_samples=200", "progress=false"]
    for name, ckpt in (("ea1", "a"), ("ea2", "a"), ("eb", "b")):
        assert cli("eval", f"ckpt={ckpt}/checkpoint.pt", *evals, f"hydra.run.dir={name}").code == 0
    assert (tmp_path / "ea1/results.csv").read_bytes() == (tmp_path / "ea2/results.csv").read_bytes()
    strip = [{k: v for k, v in r.items() if k != "checkpoint"} for r in read_csv(tmp_path / "ea1/results.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "checkpoint"} for r in read_csv(tmp_path / "eb/results.csv")]
    assert cli("train", *args, "seed=1", "hydra.run.dir=c").code == 0   # and another seed is another run
    assert not torch.equal(weights(tmp_path / "c/checkpoint.pt")["fc.weight"], wa["fc.weight"])


def test_config_differences_ignore_volatile_keys():
    saved = {"lr": 0.1, "device": "cuda", "dataset": {"name": "digits", "m": [1, 2]}, "resume": None}
    assert config_differences(saved, {**saved, "device": "cpu", "resume": "x.pt", "progress": False}) == []
    assert config_differences(saved, {**saved, "dataset": {"name": "digits", "m": [1, 3]}}) == [
        ("dataset.m", [1, 2], [1, 3])]
    assert config_differences(saved, {**saved, "lr": 0.2}) == [("lr", 0.1, 0.2)]


def test_hydra_quote_round_trips_odd_paths(compose):
    for path in ("outputs/train/2026-01-01_10-00-00/checkpoint.pt", "/tmp/a b/c'd=e,f/checkpoint.pt"):
        assert compose("train", [f"resume={hydra_quote(path)}"]).resume == path


def test_searching_for_runs_never_unpickles_code(cli, tmp_path):
    from energy_cli.runs.checkpoint import FORMAT

    marker = tmp_path / "PWNED"
    for command in ("train", "finetune"):
        evil = tmp_path / "outputs" / command / "evil" / "checkpoint.pt"
        evil.parent.mkdir(parents=True)
        torch.save({"format": FORMAT, "model": {}, "stage": "pretrain", "x": PicklePayload(str(marker))}, evil)
    assert "no interrupted `train` run" in cli("train", "resume=true", *FAST).err
    assert "no finished train run" in cli("finetune", *FAST).err
    assert "no finished train or finetune run" in cli("eval", *FAST).err
    assert not marker.exists()
