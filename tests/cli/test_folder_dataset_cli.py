"""dataset=folder end to end: train and eval on a generated ImageFolder tree, the measured normalisation in the
checkpoint, streamed and in-memory runs giving the same weights and the same scores, and layout mistakes
ending in one line with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, read_csv, run_main, working_dir
from folderdata import make_folder

from energy_cli.data import files
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.folders import earlier_outputs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["backbone.width=8", "eval_batch_size=16", "dataset.ood_size=40", *FAST]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tree, trained 1 epoch in memory and streamed, each evaluated in memory and streamed."""
    root = tmp_path_factory.mktemp("folder_cli")
    data = make_folder(root / "data", n_train=8, n_test=3)
    common = ["dataset=folder", f"dataset.path={data}", f"cache_dir={root / 'cache'}", *TINY]
    with working_dir(root):
        for mode in ("false", "true"):
            assert run_main("train", "epochs=1", "batch_size=8", f"dataset.stream={mode}", f"hydra.run.dir=tr_{mode}", *common) == 0
        for mode in ("false", "true"):
            assert run_main("eval", "ckpt=tr_false/checkpoint.pt", f"dataset.stream={mode}", "save_scores=true",
                            "score=[energy,msp,mahalanobis,knn]", "knn.k=3", f"hydra.run.dir=ev_{mode}", *common) == 0
    return root, data


def test_train_then_eval_writes_results_and_stores_the_measured_normalisation(runs):
    root, data = runs
    ckpt = load_checkpoint(root / "tr_false" / "checkpoint.pt")
    assert ckpt["dataset"] == "folder" and ckpt["num_classes"] == 3 and ckpt["config"]["dataset"]["num_classes"] == 3
    paths = sorted(files.list_images(data / "train"))
    images = np.stack([files.decode_image(p, (3, 32, 32)).numpy() for p in paths]).astype(np.float64) / 255
    np.testing.assert_allclose(ckpt["mean"], images.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(ckpt["std"], images.std(axis=(0, 2, 3)), rtol=1e-9)
    rows = read_csv(root / "ev_false" / "results.csv")
    assert {r["ood"] for r in rows} == {"gaussian", "uniform", "rademacher", "blobs", "average"}
    assert {r["dataset"] for r in rows} == {"folder"} and rows[0]["n_id"] == "9"


def test_streamed_training_gives_the_same_weights_and_loss(runs):
    root, _ = runs
    a = load_checkpoint(root / "tr_false" / "checkpoint.pt")
    b = load_checkpoint(root / "tr_true" / "checkpoint.pt")
    assert a["mean"] == b["mean"] and a["std"] == b["std"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["loop"]["history"][0]["loss"] == b["loop"]["history"][0]["loss"]


def test_streamed_and_in_memory_eval_give_identical_scores(runs):
    root, _ = runs
    a, b = np.load(root / "ev_false" / "scores.npz"), np.load(root / "ev_true" / "scores.npz")
    assert sorted(a.files) == sorted(b.files) and "id/mahalanobis" in a.files
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


def _breakers():
    def one_class(d):
        import shutil

        for name in ("dog", "emu"):
            shutil.rmtree(d / "train" / name)

    def no_test(d):
        import shutil

        shutil.rmtree(d / "test")

    def garbage(d):
        for p in d.rglob("*.png"):
            p.write_bytes(b"junk")

    def empty_split(d):
        for p in (d / "test").rglob("*.png"):
            p.unlink()

    def stray_class(d):
        (d / "test" / "yak").mkdir()
        (d / "test" / "emu" / "000.png").rename(d / "test" / "yak" / "0.png")

    return [("missing", None, "no such folder"), ("one_class", one_class, "one class folder"),
            ("no_test", no_test, "has no test/ folder"), ("garbage", garbage, "cannot read the image file"),
            ("empty_split", empty_split, "holds no image files"), ("stray_class", stray_class, "test/ has class 'yak'")]


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("name,breaker,message", _breakers(), ids=[b[0] for b in _breakers()])
def test_layout_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, command, name, breaker, message):
    data = tmp_path / "data"
    if breaker is not None:
        make_folder(data, n_train=2, n_test=1)
        breaker(data)
    with working_dir(tmp_path):
        extra = ["ckpt=none.pt"] if command == "eval" else []
        code = run_main(command, "dataset=folder", f"dataset.path={data}", "hydra.run.dir=run", *extra,
                        f"cache_dir={tmp_path / 'cache'}", *TINY)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("energy-ood: error: ") and message in lines[0], err
    assert earlier_outputs(tmp_path / "run") == []
    assert not (tmp_path / "cache").exists()


def test_folder_needs_a_path(tmp_path, capsys):
    with working_dir(tmp_path):
        code = run_main("train", "dataset=folder", "hydra.run.dir=run", *TINY)
    err = capsys.readouterr().err
    assert code == 2 and "add dataset.path=DIR" in err and len(err.strip().splitlines()) == 1


def test_without_ckpt_eval_takes_the_newest_run_of_the_same_folder(tmp_path):
    first = make_folder(tmp_path / "first", n_train=4, n_test=2)
    second = make_folder(tmp_path / "second", n_train=4, n_test=2, seed=1)
    with working_dir(tmp_path):
        for data in (first, second):   # the second folder's run is the newest
            assert run_main("train", "epochs=1", "dataset=folder", f"dataset.path={data}", "cache_dir=null", *TINY,
                            f"hydra.run.dir=outputs/train/{data.name}") == 0
        assert run_main("eval", "dataset=folder", f"dataset.path={first}", "cache_dir=null", "ood=[gaussian]", *TINY,
                        "hydra.run.dir=ev") == 0
    rows = read_csv(tmp_path / "ev" / "results.csv")
    assert rows[0]["checkpoint"] == str((tmp_path / "outputs/train/first/checkpoint.pt").resolve())
