"""Bad inputs through the CLI, table-driven: each ends with a non-zero exit status and one line that names the
key (and what it accepts), no traceback, and every file an earlier run wrote left as it was, byte for byte.

Malformed CIFAR / SVHN / image-folder data belongs to the data sources' own tests; this table covers the
config values, the checkpoints, resuming and the run folders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import FAST

from energy_cli.cli import main
from energy_cli.runs.checkpoint import FORMAT, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["backbone.width=8", *FAST]


class Payload:
    """Unpickling this creates the file `marker`: proof that a checkpoint ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a finished 1-epoch train run (run/), its evaluation (ev/), and damaged checkpoints."""
    root = tmp_path_factory.mktemp("bad")
    old, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)     # a tiny model: one thread is fastest, the more so on a busy machine
    try:
        main(["train", "epochs=1", *TINY, "hydra.run.dir=run"])
        main(["eval", "ckpt=run/checkpoint.pt", "--ood", "gaussian", *FAST, "hydra.run.dir=ev"])
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    good = (root / "run/checkpoint.pt").read_bytes()
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    (bad / "truncated.pt").write_bytes(good[: len(good) // 3])
    (bad / "empty.pt").write_bytes(b"")
    torch.save({"format": FORMAT, "model": {}, "x": Payload(str(root / "PWNED"))}, bad / "evil.pt")
    (bad / "evil_raw.pt").write_bytes(pickle.dumps(Payload(str(root / "PWNED"))))
    torch.save({"state_dict": {"w": torch.ones(2)}}, bad / "foreign.pt")
    save_checkpoint(bad / "headless.pt", {"model": {"w": torch.ones(2)}})
    ckpt = load_checkpoint(root / "run/checkpoint.pt")
    same = {k: v for k, v in ckpt.items() if k != "format"}
    save_checkpoint(bad / "wrong_weights.pt", {**same, "model": {"fc.weight": torch.zeros(3, 3)}})
    save_checkpoint(bad / "cifar10.pt", {**same, "dataset": "cifar10"})    # the header of another dataset
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CASES = [
    # config values: one line naming the key and what it accepts
    (["train", "temperature=0"], "temperature=0 must be > 0"),
    (["eval", "temperature=-1"], "temperature=-1 must be > 0"),
    (["finetune", "m_in=-5", "m_out=-5"], "m_in=-5 must be below m_out=-5"),
    (["finetune", "m_in=-2"], "m_in=-2 must be below m_out=-5"),
    (["finetune", "loss.weight=-0.1"], "loss.weight=-0.1 must be >= 0"),
    (["finetune", "loss=oe", "loss.weight=-1"], "loss.weight=-1 must be >= 0"),
    (["train", "epochs=-1"], "epochs=-1 must be >= 0"),
    (["train", "epochs=2.5"], "epochs=2.5 must be a whole number >= 0"),
    (["train", "batch_size=0"], "batch_size=0 must be >= 1"),
    (["finetune", "outlier_batch_size=0"], "outlier_batch_size=0 must be >= 1"),
    (["eval", "eval_batch_size=0"], "eval_batch_size=0 must be >= 1"),
    (["train", "lr=0"], "lr=0 must be > 0"),
    (["finetune", "lr=-0.01"], "lr=-0.01 must be > 0"),
    (["train", "lr=inf"], "lr=inf must be a finite number"),
    (["train", "lr=fast"], "lr='fast' must be a number"),
    (["train", "seed=-1"], "seed=-1 must be >= 0"),
    (["train", "momentum=1"], "momentum=1 must be in [0, 1)"),
    (["train", "checkpoint_every_steps=-5"], "checkpoint_every_steps=-5 must be >= 0"),
    (["train", "overwrite=maybe"], "overwrite='maybe' must be true or false"),
    (["train", "precision=fp16"], "precision=fp16 is not known; choose one of: auto, fp32, bf16, int8"),
    (["train", "device=tpu"], "device=tpu is not known; choose one of: auto, cpu, cuda, cuda:N"),
    # names
    (["train", "dataset=mnist"], "dataset=mnist is not known; choose one of: cifar10, cifar100, digits"),
    (["train", "dataset.name=mnist"], "dataset.name=mnist is not known; choose one of: "),
    (["eval", "backbone=vgg16"], "backbone=vgg16 is not known; choose one of: custom, resnet18, small_cnn, timm, "
                                 "torchvision, wrn40_2 (a torchvision or timm model: backbone=torchvision "
                                 "backbone.arch=vgg16"),
    (["finetune", "outliers=imagenet"], "outliers=imagenet is not known; choose one of: china_patches"),
    (["finetune", "loss=focal"], "loss=focal is not known; choose one of: energy, oe"),
    (["eval", "score=[msp,foo]"], "score=foo is not known; choose from: msp, maxlogit, energy, odin, mahalanobis, react, dice, ash, knn, vim, gen, all"),
    (["eval", "--ood", "gaussian,mars"], "unknown OOD set 'mars'; choose from: "),
    (["train", "nosuchkey=1"], "unknown key 'nosuchkey'; see the keys with: energy-ood train --cfg job"),
    # checkpoints: missing, damaged, foreign, code-carrying, or not matching the dataset / backbone
    (["eval", "ckpt=nowhere/checkpoint.pt"], "checkpoint not found: nowhere/checkpoint.pt"),
    (["eval", "ckpt=bad/corrupt.pt"], "bad/corrupt.pt is not a readable checkpoint"),
    (["eval", "ckpt=bad/truncated.pt"], "it is damaged (truncated or corrupt) or not a checkpoint"),
    (["eval", "ckpt=bad/empty.pt"], "it is damaged (truncated or corrupt) or not a checkpoint"),
    (["eval", "ckpt=bad/evil.pt"], "refusing to load bad/evil.pt: it holds pickled Python objects"),
    (["eval", "ckpt=bad/evil_raw.pt"], "bad/evil_raw.pt"),
    (["finetune", "ckpt=bad/evil.pt"], "refusing to load bad/evil.pt"),
    (["eval", "ckpt=bad/foreign.pt"], "bad/foreign.pt is not an energy-ood checkpoint"),
    (["eval", "ckpt=bad/headless.pt"], "bad/headless.pt lacks dataset, backbone, num_classes"),
    (["eval", "ckpt=bad/wrong_weights.pt"], "bad/wrong_weights.pt does not fit backbone small_cnn"),
    (["eval", "ckpt=bad/cifar10.pt"], "bad/cifar10.pt was trained on dataset=cifar10, not digits; add dataset=cifar10"),
    (["finetune", "ckpt=bad/cifar10.pt"], "bad/cifar10.pt was trained on dataset=cifar10, not digits"),
    (["eval", "ckpt=run/checkpoint.pt", "backbone=wrn40_2"], "holds backbone=small_cnn, not wrn40_2; add backbone=small_cnn"),
    (["eval", "ckpt=run/checkpoint.pt", "backbone.width=16"],
     "holds a small_cnn with backbone.width=8, not 16; add backbone.width=8 or drop that override"),
    (["eval", "ckpt=run/checkpoint.pt", "dataset.num_classes=5"],
     "expects 10 classes and 1x8x8 images, but dataset=digits has 5 classes and 1x8x8 images"),
    (["eval", "ckpt=run/checkpoint.pt", "dataset.channels=3"], "dataset.mean has 1 values, but dataset=digits has 3 channels"),
    (["eval", "ckpt=run/checkpoint.pt", "dataset.image_size=16"], "but dataset=digits has 10 classes and 1x16x16"),
    # resuming
    (["train", "resume=nowhere/checkpoint.pt"], "checkpoint not found: nowhere/checkpoint.pt"),
    (["train", "resume=run"], "that run finished (epoch 1 of 1); nothing to resume"),
    (["finetune", "resume=run/checkpoint.pt"], "not of `energy-ood finetune`"),
    (["train", "resume=true"], "resume=true: no interrupted `train` run with this config"),
    (["train", "resume=bad/evil.pt"], "refusing to load bad/evil.pt"),
    (["train", "-m", "resume=run", "seed=1,2"], "resume= cannot be combined with -m"),
    (["eval", "resume=true"], "unknown key 'resume'; see the keys with: energy-ood eval --cfg job"),
    # run folders that already hold an earlier run's outputs
    (["train", "hydra.run.dir=run"], "hydra.run.dir=run already holds checkpoint.pt from an earlier run"),
    (["eval", "ckpt=run/checkpoint.pt", "hydra.run.dir=ev"], "hydra.run.dir=ev already holds results.csv"),
    (["train", "-m", "seed=1,2", "hydra.sweep.dir=."], "hydra.sweep.dir=. already holds"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_touches_nothing(workspace, monkeypatch, capsys, args, message):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    try:
        main([args[0], *FAST, *args[1:]])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("energy-ood: error: "), err
    assert "Traceback" not in err
    assert snapshot(workspace) == before        # nothing written, nothing changed, no run folder left behind
    assert not (workspace / "PWNED").exists()


def test_a_malicious_checkpoint_in_a_real_process(workspace, cli_subprocess):
    before = snapshot(workspace)
    result = cli_subprocess("eval", "ckpt=bad/evil.pt", *FAST, cwd=workspace)
    assert result.code == 2 and "refusing to load bad/evil.pt" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert snapshot(workspace) == before
    assert not (workspace / "PWNED").exists()


def test_overwrite_true_is_the_way_to_reuse_a_folder(workspace, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    main(["eval", f"ckpt={workspace}/run/checkpoint.pt", "--ood", "gaussian", *FAST, "hydra.run.dir=ev"])
    first = (tmp_path / "ev/results.csv").read_bytes()
    main(["eval", f"ckpt={workspace}/run/checkpoint.pt", "--ood", "uniform", *FAST, "hydra.run.dir=ev",
          "overwrite=true"])
    capsys.readouterr()
    assert (tmp_path / "ev/results.csv").read_bytes() != first
    assert b",uniform," in (tmp_path / "ev/results.csv").read_bytes()
