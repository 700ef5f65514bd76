"""`energy-ood eval score=extended` end to end on the embedded digits: the paper's five scores plus the energy
family (react, dice, ash, knn, vim, gen), float64 score vectors, the shared training-feature cache, the
identities with the energy score through the CLI, and the keys' validation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, own_checkpoint, read_csv, working_dir

from energy_cli.cli import main
from energy_cli.commands.validate import validate
from energy_cli.detectors.gen import gen_score
from energy_cli.errors import UserError
from energy_cli.ood.metrics import detection_metrics

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXTENDED = ["msp", "maxlogit", "energy", "odin", "mahalanobis", "react", "dice", "ash", "knn", "vim", "gen"]


@pytest.fixture(scope="module")
def root(pretrained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("extended")
    own_checkpoint(pretrained, folder / "t")
    return folder


def eval_run(root: Path, folder: str, *args: str) -> Path:
    with working_dir(root):
        main(["eval", "ckpt=t/checkpoint.pt", f"hydra.run.dir={folder}", *FAST, *args])
    return root / folder


def test_score_extended_end_to_end(root, capsys):
    run = eval_run(root, "ext", "score=extended", "save_scores=true", "--ood", "uniform,blobs")
    out = capsys.readouterr().out
    assert "extracted the penultimate features of 1437 digits training images (cached in t/train_features.pt)" in out
    rows = read_csv(run / "results.csv")
    assert [(r["score"], r["ood"]) for r in rows] == [(s, o) for s in EXTENDED for o in ("uniform", "blobs", "average")]
    assert {r["score"]: r["temperature"] for r in rows} == {
        "msp": "1", "maxlogit": "", "energy": "1", "odin": "1000", "mahalanobis": "",
        "react": "1", "dice": "1", "ash": "1", "knn": "", "vim": "1", "gen": ""}
    scores = np.load(run / "scores.npz")
    for name in ("id", "uniform", "blobs"):
        for score in EXTENDED:
            assert scores[f"{name}/{score}"].dtype == np.float64, (name, score)
        logits = torch.from_numpy(scores[f"{name}/logits"])
        assert np.allclose(scores[f"{name}/gen"], gen_score(logits, 0.1, 100).numpy(), rtol=0, atol=1e-12)
    for row in rows:
        if row["ood"] != "average":
            want = detection_metrics(scores[f"id/{row['score']}"], scores[f"{row['ood']}/{row['score']}"])
            assert float(row["fpr95"]) == pytest.approx(100 * want["fpr95"], abs=1e-3)

    # a second run with other settings refits from the cached features
    again = eval_run(root, "ext2", "score=[react,knn]", "react.percentile=80", "knn.k=10", "--ood", "uniform")
    assert "reusing the training features cached in t/train_features.pt" in capsys.readouterr().out
    assert {r["score"] for r in read_csv(again / "results.csv")} == {"react", "knn"}


def test_identities_with_energy_through_the_cli(root, capsys):
    run = eval_run(root, "ident", "score=[energy,dice,ash]", "dice.sparsity=0", "ash.variant=p", "ash.percentile=0",
                   "save_scores=true", "--ood", "uniform")
    capsys.readouterr()
    scores = np.load(run / "scores.npz")
    for name in ("id", "uniform"):
        assert np.array_equal(scores[f"{name}/dice"], scores[f"{name}/energy"])
        assert np.array_equal(scores[f"{name}/ash"], scores[f"{name}/energy"])


@pytest.mark.smoke
@pytest.mark.parametrize("override,message", [
    ("react.percentile=101", "react.percentile=101 must lie in [0, 100]"),
    ("dice.sparsity=1", "dice.sparsity=1 must lie in [0, 1)"),
    ("ash.variant=q", "ash.variant=q is not known; choose one of: p, b, s"),
    ("ash.percentile=100", "ash.percentile=100 must lie in [0, 100)"),
    ("knn.k=0", "knn.k=0 must be >= 1"),
    ("vim.dim=-3", "vim.dim=-3 must be >= 1"),
    ("gen.gamma=0", "gen.gamma=0 must be > 0"),
    ("gen.m=0", "gen.m=0 must be >= 1"),
])
def test_energy_family_keys_are_validated(compose, override, message):
    with pytest.raises(UserError) as info:
        validate(compose("eval", [override]))
    assert message in str(info.value)


@pytest.mark.smoke
def test_energy_family_defaults(compose):
    cfg = compose("eval")
    assert cfg.react.percentile == 90 and cfg.dice.sparsity == 0.9 and (cfg.ash.variant, cfg.ash.percentile) == ("s", 90)
    assert cfg.knn.k == 50 and cfg.vim.dim == "auto" and (cfg.gen.gamma, cfg.gen.m) == (0.1, 100)


# --------------------------------------------------------------------------- odin.tune / mahalanobis.tune


def test_odin_and_mahalanobis_tuning(root, capsys):
    import json

    run = eval_run(root, "tuned", "score=[msp,odin,mahalanobis]", "odin.tune=true", "mahalanobis.tune=true",
                   "odin.grid.temperature=[1,1000]", "odin.grid.noise=[0,0.0014]", "mahalanobis.grid.noise=[0,0.01]",
                   "validation_samples=60", "save_scores=true", "--ood", "uniform")
    out = capsys.readouterr().out
    assert "odin: tuned on 6 validation OOD sets (val_mean_pairs, val_geomean, val_jigsaw, val_speckle," in out
    tuning = json.loads((run / "tuning.json").read_text())
    assert set(tuning) == {"odin", "mahalanobis"}
    odin = tuning["odin"]
    assert [(r["temperature"], r["noise"]) for r in odin["grid"]] == [(1, 0), (1, 0.0014), (1000, 0), (1000, 0.0014)]
    assert odin["validation_sets"][0] == "val_mean_pairs" and odin["n_validation"] == [60] * 6
    best = min(odin["grid"], key=lambda r: (r["fpr95"], -r["auroc"]))
    assert odin["chosen"] == {"temperature": best["temperature"], "noise": best["noise"]}
    assert odin["validation_fpr95"] == best["fpr95"]
    rows = read_csv(run / "results.csv")
    assert {r["temperature"] for r in rows if r["score"] == "odin"} == {f"{best['temperature']:g}"}
    assert len(tuning["mahalanobis"]["grid"]) == 2 and tuning["mahalanobis"]["chosen"]["noise"] in (0, 0.01)

    # a one-point grid at T = 1 without noise is the MSP
    one = eval_run(root, "tuned1", "score=[msp,odin]", "odin.tune=true", "odin.grid.temperature=[1]",
                   "odin.grid.noise=[0]", "validation_samples=20", "save_scores=true", "--ood", "uniform")
    capsys.readouterr()
    scores = np.load(one / "scores.npz")
    assert np.array_equal(scores["id/odin"], scores["id/msp"])


def test_tuning_refuses_a_test_set_as_validation_data(root, capsys):
    with working_dir(root), pytest.raises(SystemExit) as info:
        main(["eval", "ckpt=t/checkpoint.pt", "hydra.run.dir=bad", *FAST, "score=[odin]", "odin.tune=true",
              "validation_ood=[uniform]", "--ood", "uniform"])
    assert info.value.code == 2
    assert "validation_ood names uniform, one of this run's OOD test sets" in capsys.readouterr().err


@pytest.mark.smoke
@pytest.mark.parametrize("override,message", [
    ("odin.tune=maybe", "odin.tune=maybe must be true or false"),
    ("odin.grid.temperature=[]", "odin.grid.temperature=[] must be a non-empty list of numbers"),
    ("odin.grid.temperature=[1,0]", "odin.grid.temperature[1]=0 must be > 0"),
    ("mahalanobis.grid.noise=[-1]", "mahalanobis.grid.noise[0]=-1 must be >= 0"),
    ("validation_samples=0", "validation_samples=0 must be >= 1"),
])
def test_tuning_keys_are_validated(compose, override, message):
    with pytest.raises(UserError) as info:
        validate(compose("eval", [override]))
    assert message in str(info.value)
