"""`energy-ood eval` with every score (score=all: msp, maxlogit, energy, odin, mahalanobis), the
Mahalanobis fit cache, per-score temperatures and temperature sweeps, end to end on the embedded digits."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, header, read_csv, working_dir
from sklearn.covariance import EmpiricalCovariance

from energy_cli.cli import main
from energy_cli.commands.validate import validate
from energy_cli.data.embedded import load_digits_split
from energy_cli.errors import UserError
from energy_cli.models import build_model
from energy_cli.ood.metrics import detection_metrics
from energy_cli.ood.scores import energy_score, maxlogit_score, msp_score
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.outputs import RESULT_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SETS = ["flower_patches", "gaussian", "uniform", "rademacher", "blobs"]
ALL = ["msp", "maxlogit", "energy", "odin", "mahalanobis"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with a 2-epoch pretraining run on digits (its checkpoint at t/checkpoint.pt)."""
    with working_dir(tmp_path_factory.mktemp("detectors")) as root:
        main(["train", "epochs=2", "hydra.run.dir=t", *FAST])
    return root


def eval_run(root: Path, folder: str, *args: str) -> Path:
    with working_dir(root):
        main(["eval", "ckpt=t/checkpoint.pt", f"hydra.run.dir={folder}", *FAST, *args])
    return root / folder


def load_model_from(path: Path):
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def normalise(images, ckpt):
    mean = torch.tensor(ckpt["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std, std


def test_score_all_writes_five_scores_that_agree_with_a_recomputation(trained, capsys):
    (trained / "t/mahalanobis.pt").unlink(missing_ok=True)
    run = eval_run(trained, "all", "score=all", "save_scores=true")
    out = capsys.readouterr().out
    assert "mahalanobis: fitted on 1437 digits training images (cached in t/mahalanobis.pt)" in out
    assert header(run / "results.csv") == RESULT_COLUMNS
    rows = read_csv(run / "results.csv")
    assert [(r["score"], r["ood"]) for r in rows] == [(s, o) for s in ALL for o in SETS + ["average"]]
    # the temperature each score applies: msp is the softmax at T = 1, odin has its own, two have none
    assert {r["score"]: r["temperature"] for r in rows} == {
        "msp": "1", "maxlogit": "", "energy": "1", "odin": "1000", "mahalanobis": ""}

    scores = np.load(run / "scores.npz")
    assert set(scores.files) == {f"{s}/{k}" for s in ["id", *SETS] for k in [*ALL, "logits"]}
    for name in ["id", *SETS]:
        logits = torch.from_numpy(scores[f"{name}/logits"])
        assert np.allclose(scores[f"{name}/msp"], msp_score(logits).numpy(), atol=1e-6)
        assert np.allclose(scores[f"{name}/maxlogit"], maxlogit_score(logits).numpy(), atol=1e-6)
        assert np.allclose(scores[f"{name}/energy"], energy_score(logits).numpy(), atol=1e-5)
    for row in rows:
        if row["ood"] == "average":
            continue
        want = detection_metrics(scores[f"id/{row['score']}"], scores[f"{row['ood']}/{row['score']}"])
        for metric, value in want.items():
            assert float(row[metric]) == pytest.approx(100 * value, abs=1e-3), (row["score"], row["ood"], metric)
    for score in ALL:
        avg = next(r for r in rows if r["score"] == score and r["ood"] == "average")
        per_set = [float(r["auroc"]) for r in rows if r["score"] == score and r["ood"] != "average"]
        assert float(avg["auroc"]) == pytest.approx(np.mean(per_set), abs=1e-3)

    # ODIN and Mahalanobis of the ID test set, recomputed here from the checkpoint with plain torch / sklearn
    model, ckpt = load_model_from(trained / "t/checkpoint.pt")
    train, test = load_digits_split()
    x, std = normalise(test.images, ckpt)
    x.requires_grad_(True)
    out = model(x)
    torch.nn.CrossEntropyLoss()(out / 1000, out.argmax(1)).backward()
    with torch.no_grad():
        odin = F.softmax(model(x - 0.0014 * torch.sign(x.grad) / std) / 1000, dim=1).max(1).values
    assert np.allclose(scores["id/odin"], odin.numpy(), rtol=0, atol=1e-7)
    with torch.no_grad():
        f_train = model.features(normalise(train.images, ckpt)[0]).double().numpy()
        f_test = model.features(x.detach()).double().numpy()
    y = train.labels.numpy()
    means = np.stack([f_train[y == c].mean(0) for c in range(10)])
    cov = EmpiricalCovariance(assume_centered=True).fit(f_train - means[y])
    distances = np.stack([cov.mahalanobis(f_test - means[c]) for c in range(10)], axis=1)
    assert np.allclose(scores["id/mahalanobis"], -distances.min(1), rtol=1e-4, atol=1e-3)


def test_mahalanobis_fit_is_cached_next_to_the_checkpoint_and_refitted_when_it_changes(trained, capsys):
    first = eval_run(trained, "cache1", "score=[mahalanobis]", "--ood", "gaussian", "save_scores=true")
    second = eval_run(trained, "cache2", "score=[mahalanobis]", "--ood", "gaussian", "save_scores=true")
    out = capsys.readouterr().out
    cache = trained / "t/mahalanobis.pt"
    assert cache.is_file()
    assert "mahalanobis: reusing the fit cached in t/mahalanobis.pt" in out
    a, b = np.load(first / "scores.npz"), np.load(second / "scores.npz")
    assert np.array_equal(a["id/mahalanobis"], b["id/mahalanobis"])
    cached = torch.load(cache, weights_only=True)
    assert cached["tensors"]["means"].shape == (10, 64) and cached["tensors"]["precision"].shape == (64, 64)

    # a changed checkpoint (same path, other weights) invalidates the cache
    ckpt = load_checkpoint(trained / "t/checkpoint.pt")
    original = (trained / "t/checkpoint.pt").read_bytes()
    try:
        ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"] + 1.0
        torch.save(ckpt, trained / "t/checkpoint.pt")
        eval_run(trained, "cache3", "score=[mahalanobis]", "--ood", "gaussian")
        assert "mahalanobis: fitted on 1437 digits training images (cached in" in capsys.readouterr().out
    finally:
        (trained / "t/checkpoint.pt").write_bytes(original)
    # a damaged cache is refitted, not trusted
    cache.write_bytes(b"not a cache")
    eval_run(trained, "cache4", "score=[mahalanobis]", "--ood", "gaussian")
    assert "mahalanobis: fitted on" in capsys.readouterr().out


def test_odin_with_t1_and_no_noise_equals_msp_through_the_cli(trained, capsys):
    run = eval_run(trained, "odin1", "score=[msp,odin]", "odin.temperature=1", "odin.noise=0", "save_scores=true",
                   "--ood", "uniform")
    capsys.readouterr()
    scores = np.load(run / "scores.npz")
    for name in ("id", "uniform"):
        assert np.array_equal(scores[f"{name}/odin"], scores[f"{name}/msp"])
    rows = read_csv(run / "results.csv")
    assert {r["score"]: r["temperature"] for r in rows} == {"msp": "1", "odin": "1"}


def test_temperature_sweep_writes_one_results_file_per_job(trained, capsys):
    with working_dir(trained):
        main(["eval", "-m", "temperature=1,2", "ckpt=t/checkpoint.pt", "score=[msp,energy]", "--ood", "uniform",
              "save_scores=true", *FAST])
    capsys.readouterr()
    sweep = sorted((trained / "multirun/eval").iterdir())
    assert len(sweep) == 1
    jobs = sorted(p for p in sweep[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    by_job = [read_csv(job / "results.csv") for job in jobs]
    for t, rows in zip((1, 2), by_job):
        assert {r["temperature"] for r in rows if r["score"] == "energy"} == {str(t)}
        assert {r["temperature"] for r in rows if r["score"] == "msp"} == {"1"}   # MSP does not use T
        logits = torch.from_numpy(np.load(jobs[t - 1] / "scores.npz")["id/logits"])
        energies = np.load(jobs[t - 1] / "scores.npz")["id/energy"]
        assert np.allclose(energies, energy_score(logits, float(t)).numpy(), atol=1e-5)
    msp = [[r["auroc"] for r in rows if r["score"] == "msp"] for rows in by_job]
    assert msp[0] == msp[1]


@pytest.mark.parametrize("override,message", [
    ("odin.temperature=0", "odin.temperature=0 must be > 0"),
    ("odin.noise=-0.1", "odin.noise=-0.1 must be >= 0"),
    ("mahalanobis.noise=-1", "mahalanobis.noise=-1 must be >= 0"),
    ("score=[odin,mahal]", "score=mahal is not known; choose from: msp, maxlogit, energy, odin, mahalanobis, react"),
])
def test_detector_keys_are_validated(compose, override, message):
    with pytest.raises(UserError) as info:
        validate(compose("eval", [override]))
    assert message in str(info.value)


def test_detector_key_defaults(compose):
    cfg = compose("eval")
    assert (cfg.odin.temperature, cfg.odin.noise, cfg.mahalanobis.noise) == (1000.0, 0.0014, 0.0)
