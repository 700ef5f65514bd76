"""energy-ood score PATH...: image files and folders -> scores.csv with the stored (or given) threshold."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, own_checkpoint, read_csv
from conftest import run_main as run
from PIL import Image

from energy_cli.commands.score import SCORE_COLUMNS
from energy_cli.data.batches import Normalizer
from energy_cli.data.files import decode_image
from energy_cli.models import build_model
from energy_cli.ood.scores import energy_score, msp_score
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.thresholds import read_thresholds

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def images(tmp_path):
    """A folder of images of several sizes and modes, one damaged file, one non-image, and odd file names."""
    from sklearn.datasets import load_digits

    folder = tmp_path / "imgs"
    (folder / "sub dir").mkdir(parents=True)
    digits = load_digits().images
    for i in range(4):
        Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)).resize((40, 40)).save(folder / f"digit{i}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "sub dir" / "noise rgb.jpg")
    odd = tmp_path / "x=1, y:2 it's.bmp"
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(odd)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder, odd


def expected(ckpt_path, path):
    """Class, softmax and energy score of one file, recomputed from the checkpoint directly."""
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = decode_image(path, (1, 8, 8))[None]
    with torch.no_grad():
        logits = model(Normalizer(ckpt["mean"], ckpt["std"])(x))
    return int(logits.argmax()), float(msp_score(logits)[0]), float(energy_score(logits)[0])


def test_score_folder_and_file_with_the_stored_threshold(pretrained, images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder, odd = images
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    assert run("eval", f"ckpt={ckpt}", "--ood", "gaussian", "hydra.run.dir=ev", *FAST) == 0
    threshold = read_thresholds(tmp_path / "model" / "thresholds.json")["scores"]["energy"]["threshold"]
    capsys.readouterr()

    assert run("score", "imgs", odd.name, f"ckpt={ckpt}", "hydra.run.dir=sc", *FAST) == 0
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "sc" / "scores.csv")
    assert list(rows[0]) == SCORE_COLUMNS
    assert [r["path"] for r in rows] == [str(Path("imgs") / f"digit{i}.png") for i in range(4)] + [
        str(Path("imgs") / "sub dir" / "noise rgb.jpg"), odd.name]
    for r in rows:
        cls, softmax, energy = expected(ckpt, tmp_path / r["path"])
        assert int(r["class"]) == cls
        assert float(r["softmax"]) == pytest.approx(softmax, rel=1e-4)
        assert float(r["energy_score"]) == pytest.approx(energy, rel=1e-4, abs=1e-4)
        assert r["ood"] == str(int(energy < threshold))
    unreadable = read_csv(tmp_path / "sc" / "unreadable.csv")
    assert [u["path"] for u in unreadable] == [str(Path("imgs") / "broken.png")] and unreadable[0]["reason"]
    flagged = sum(r["ood"] == "1" for r in rows)
    assert f"scored 6 images: {flagged} (" in out and "1 of 7 files could not be read" in out
    assert f"ood when energy score < {threshold:.6g}" in out and "wrote sc/scores.csv" in out

    # threshold= replaces the stored one
    assert run("score", "imgs", f"ckpt={ckpt}", "threshold=-1000", "hydra.run.dir=lo", *FAST) == 0
    assert run("score", "imgs", f"ckpt={ckpt}", "threshold=1000", "hydra.run.dir=hi", *FAST) == 0
    capsys.readouterr()
    assert {r["ood"] for r in read_csv(tmp_path / "lo" / "scores.csv")} == {"0"}
    assert {r["ood"] for r in read_csv(tmp_path / "hi" / "scores.csv")} == {"1"}


@pytest.mark.parametrize("args,message", [
    ([], "name the images to score: energy-ood score PATH..."),
    (["nowhere"], "no such file or folder: nowhere"),
    (["empty"], "no image files under empty"),
    (["imgs"], "no thresholds.json at"),
    (["imgs/broken.png", "threshold=0"], "none of the 1 files could be decoded"),
])
def test_score_user_errors(pretrained, images, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    assert run("score", *args, f"ckpt={ckpt}", *FAST) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
