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
