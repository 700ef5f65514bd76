"""Scale-out: data-parallel training under torchrun (2 CPU processes, gloo) and Hydra launchers."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, REPO, read_csv

from energy_cli.engine.distributed import Group, backend_for, from_env
from energy_cli.runs.checkpoint import load_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.distributed]


def torchrun(cwd: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "energy_cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_trains_and_finetunes_with_one_writer(tmp_path, cli):
    pre = torchrun(tmp_path, "train", "epochs=2", "hydra.run.dir=pre", *FAST)
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert pre.stdout.count("run folder pre") == 1                    # rank 1 prints nothing
    assert pre.stdout.count("weights identical on all 2 ranks") == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "pre/.hydra/config.yaml", "pre/.hydra/hydra.yaml", "pre/.hydra/overrides.yaml",
        "pre/checkpoint.pt", "pre/train.log", "pre/train_log.csv"]
    ckpt = load_checkpoint(tmp_path / "pre/checkpoint.pt")
    assert ckpt["finished"] and ckpt["epoch"] == 2 and ckpt["step"] == 2 * 12   # 1,437 images, global batch 128
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "pre/train_log.csv")] == [1, 2]

    ft = torchrun(tmp_path, "finetune", "epochs=1", "ckpt=pre/checkpoint.pt", "hydra.run.dir=ft", *FAST)
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert ft.stdout.count("weights identical on all 2 ranks") == 1
    assert load_checkpoint(tmp_path / "ft/checkpoint.pt")["stage"] == "energy"
    assert len(list(tmp_path.rglob("checkpoint.pt"))) == 2

    # the checkpoints load in one plain process
    ev = cli("eval", "ckpt=ft/checkpoint.pt", "--ood", "gaussian", "hydra.run.dir=ev", *FAST)
    assert ev.code == 0, ev.err
    assert (tmp_path / "ev/results.csv").is_file()


def test_torchrun_resumes_an_interrupted_run(tmp_path, cli):
    from test_resume import interrupt_at_call

    with interrupt_at_call(30):
        stopped = cli("train", "epochs=3", "hydra.run.dir=run", *FAST)
    assert stopped.code == 130, stopped.err
    interrupted = load_checkpoint(tmp_path / "run/checkpoint.pt")
    step, epoch = interrupted["step"], interrupted["epoch"]
    assert 0 < step < 36 and not interrupted["finished"]
    resumed = torchrun(tmp_path, "train", "resume=run/checkpoint.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run/checkpoint.pt at epoch {epoch + 1}, step {step}" in resumed.stdout
    assert "weights identical on all 2 ranks" in resumed.stdout
    final = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert final["finished"] and final["step"] == 36 and final["resumes"][0]["step"] == step
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "run/train_log.csv")] == [1, 2, 3]


def test_sharded_and_weighted_losses_give_the_full_batch_gradient():
    """What fit() does with a global batch of 29 on 2 ranks: each rank takes its slice and weights its mean
    loss by len(slice) * world / 29; DDP averages the gradients -> exactly the full-batch gradient."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(29, 5), torch.randint(0, 3, (29,))
    full = torch.autograd.grad(F.cross_entropy(model(x), y), model.weight)[0]
    grads = []
    for rank in range(2):
        part = Group(rank=rank, world_size=2).shard(29)
        share = len(y[part]) * 2 / 29
        loss = F.cross_entropy(model(x[part]), y[part]) * share
        grads.append(torch.autograd.grad(loss, model.weight)[0])
    assert torch.allclose((grads[0] + grads[1]) / 2, full, atol=1e-6)


def test_shards_cover_the_batch_once():
    for n, world in ((128, 2), (29, 2), (10, 4), (3, 3)):
        parts = [Group(rank=r, world_size=world).shard(n) for r in range(world)]
        covered = [i for p in parts for i in range(n)[p]]
        assert covered == list(range(n))
        assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1


def test_environment_and_backend():
    assert from_env({}) == Group(0, 1, 0) and not from_env({}).enabled
    g = from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (g.rank, g.world_size, g.local_rank, g.is_main, g.enabled) == (1, 4, 1, False, True)
    assert backend_for(["device=cpu"]) == "gloo"


def test_backend_follows_the_device(monkeypatch):
    """device=auto picks nccl exactly when CUDA is there; device=cpu is always gloo."""
    for cuda, want in ((True, "nccl"), (False, "gloo")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert backend_for([]) == want
        assert backend_for(["device=auto"]) == want
        assert backend_for(["device=cpu"]) == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend_for(["device=cuda:1"]) == "nccl"


def test_under_torchrun_sweeps_are_refused_and_eval_runs_on_rank_0_only(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    quiet = cli("eval", *FAST)
    assert quiet.code == 0 and quiet.out == "" and not any(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    sweep = cli("train", "-m", "seed=0,1", *FAST)
    assert sweep.code == 2 and "-m sweeps do not run under torchrun" in sweep.err


# --------------------------------------------------------------------------- Hydra launchers

def test_joblib_sweep_writes_two_run_folders(cli, monkeypatch, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))   # the joblib workers import this checkout
    result = cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "epochs=1", *FAST)
    assert result.code == 0, result.err
    jobs = sorted(tmp_path.glob("multirun/train/*/*/checkpoint.pt"))
    assert [p.parent.name for p in jobs] == ["0", "1"]
    assert [load_checkpoint(p)["config"]["seed"] for p in jobs] == [0, 1]


def test_slurm_launcher_config_composes_with_the_plugins_fields():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    from energy_cli.config.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("finetune", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                   "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=90",
                                   "hydra.launcher.mem_gb=64"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == ("gpu", 2, 90, 64)
    assert set(launcher.keys()) == set(OmegaConf.structured(SlurmQueueConf).keys())


def test_the_job_function_is_picklable():
    import cloudpickle

    from energy_cli.launch import _task

    assert pickle.loads(pickle.dumps(_task)) is _task
    assert cloudpickle.loads(cloudpickle.dumps(_task)) is _task
