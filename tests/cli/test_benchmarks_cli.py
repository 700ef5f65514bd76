"""End-to-end CLI runs on the benchmark datasets, as miniature files in their public formats
(tests/minidata.py): CIFAR-10/100 training, fine-tuning on the 300K-images file, evaluation on the six
OOD sets with repeated draws, folder and npy data of one's own, and missing or damaged data."""

import os
import zlib
from pathlib import Path

import minidata
import numpy as np
import pytest
from conftest import FAST, header, read_csv

from energy_cli.cli import main
from energy_cli.engine.seeding import mix_seed
from energy_cli.ood.metrics import METRIC_NAMES, detection_metrics, draw_indices
from energy_cli.runs.checkpoint import load_checkpoint
from energy_cli.runs.outputs import RESULT_COLUMNS, STD_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIX = ["textures", "svhn", "places365", "lsun_c", "lsun_r", "isun"]
N_OOD = 30


def run(root: Path, *args: str) -> None:
    old = os.getcwd()
    os.chdir(root)
    try:
        main(list(args))
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A data_root with every dataset in miniature, a CIFAR-10 pretraining run and an energy fine-tuning
    run on the 300K-images file (small CNN, one epoch each)."""
    root = tmp_path_factory.mktemp("bench")
    minidata.write_all(root / "data", n_ood=N_OOD)
    run(root, "train", "dataset=cifar10", "epochs=1", "hydra.run.dir=runs/train", *FAST)
    run(root, "finetune", "dataset=cifar10", "outliers=tinyimages300k", "epochs=1", "outlier_batch_size=32",
        "ckpt=runs/train/checkpoint.pt",
        "hydra.run.dir=runs/finetune", *FAST)
    return root


def test_cifar10_train_and_finetune_on_300k_images(bench):
    pre = load_checkpoint(bench / "runs/train/checkpoint.pt")
    assert (pre["dataset"], pre["num_classes"], pre["in_channels"], pre["image_size"]) == ("cifar10", 10, 3, 32)
    assert pre["mean"] == pytest.approx([0.4914, 0.4824, 0.4467]) and pre["finished"]
    ft = load_checkpoint(bench / "runs/finetune/checkpoint.pt")
    assert ft["stage"] == "energy" and ft["extra"]["outliers"] == "tinyimages300k"
    assert (ft["extra"]["m_in"], ft["extra"]["m_out"]) == (-23.0, -5.0)
    assert ft["extra"]["init_checkpoint"] == str((bench / "runs/train/checkpoint.pt").resolve())
    assert [int(r["epoch"]) for r in read_csv(bench / "runs/finetune/train_log.csv")] == [1]


def test_eval_all_six_sets_with_repeated_draws(bench, monkeypatch, capsys):
    """`--ood all num_to_avg=3 ood_samples=20`: six rows and an average per score, std columns; every image
    is scored once and the draws are seeded subsets of the saved score vectors."""
    import energy_cli.commands.evaluate as evaluate

    scored = []
    real_score_images = evaluate.score_images

    def counting_score_images(model, images, *args, **kwargs):
        scored.append(len(images))
        return real_score_images(model, images, *args, **kwargs)

    monkeypatch.setattr(evaluate, "score_images", counting_score_images)
    run(bench, "eval", "dataset=cifar10", "--ood", "all", "num_to_avg=3", "ood_samples=20", "save_scores=true",
        "ckpt=runs/finetune/checkpoint.pt", "hydra.run.dir=runs/eval_all", *FAST)
    out = capsys.readouterr().out
    assert "AVERAGE" in out
    path = bench / "runs/eval_all/results.csv"
    assert header(path) == RESULT_COLUMNS + STD_COLUMNS
    rows = read_csv(path)
    assert [(r["score"], r["ood"]) for r in rows] == [(s, o) for s in ("msp", "energy") for o in SIX + ["average"]]
    assert scored == [40] + [N_OOD] * 6                     # each image scored once, not once per draw
    assert {int(r["n_ood"]) for r in rows if r["ood"] != "average"} == {20}
    assert {int(r["n_ood"]) for r in rows if r["ood"] == "average"} == {120}
    assert {int(r["n_id"]) for r in rows} == {40}

    scores = np.load(bench / "runs/eval_all/scores.npz")
    for score in ("msp", "energy"):
        per_draw = {}
        for name in SIX:
            assert scores[f"{name}/{score}"].shape == (N_OOD,)
            draws = draw_indices(N_OOD, 20, 3, mix_seed(0, zlib.crc32(name.encode())))
            assert len({tuple(d) for d in draws}) == 3        # three different subsets
            values = [detection_metrics(scores[f"id/{score}"], scores[f"{name}/{score}"][d]) for d in draws]
            per_draw[name] = values
            row = next(r for r in rows if r["score"] == score and r["ood"] == name)
            for m in METRIC_NAMES:
                v = np.array([x[m] for x in values])
                assert float(row[m]) == pytest.approx(100 * v.mean(), abs=1e-3)
                assert float(row[f"{m}_std"]) == pytest.approx(100 * v.std(), abs=1e-3)
        avg = next(r for r in rows if r["score"] == score and r["ood"] == "average")
        for m in METRIC_NAMES:
            by_draw = np.mean([[x[m] for x in per_draw[name]] for name in SIX], axis=0)
            assert float(avg[m]) == pytest.approx(100 * by_draw.mean(), abs=1e-3)
            assert float(avg[f"{m}_std"]) == pytest.approx(100 * by_draw.std(), abs=1e-3)


def test_eval_twice_gives_the_same_file_without_decoding_again(bench, monkeypatch, capsys):
    from energy_cli.data import files

    run(bench, "eval", "dataset=cifar10", "num_to_avg=2", "ood_samples=10", "ckpt=runs/train/checkpoint.pt",
        "hydra.run.dir=runs/eval_a", *FAST)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached folder set was decoded again")

    monkeypatch.setattr(files, "decode_image", no_decoding)
    run(bench, "eval", "dataset=cifar10", "num_to_avg=2", "ood_samples=10", "ckpt=runs/train/checkpoint.pt",
        "hydra.run.dir=runs/eval_b", *FAST)
    capsys.readouterr()
    a, b = (bench / "runs/eval_a/results.csv").read_text(), (bench / "runs/eval_b/results.csv").read_text()
    assert a == b and len(read_csv(bench / "runs/eval_a/results.csv")) == 14
    cached = {p.name.split("-")[0] for p in (bench / "data/cache").glob("*-3x32x32-*.npy")}
    assert {"textures", "places365", "lsun_c", "lsun_r", "isun"} <= cached   # the five folder sets


def test_digits_model_against_rgb_sets(bench, monkeypatch, capsys, tmp_path):
    """Grey 8x8 digits model vs RGB 32x32 SVHN, JPEG folder sets and a folder named on the command line."""
    minidata.write_images(tmp_path / "my imgs", 12, (20, 30), seed=9, suffix=".png")
    run(bench, "train", "epochs=1", "hydra.run.dir=runs/digits", *FAST)
    run(bench, "eval", "ckpt=runs/digits/checkpoint.pt", "--ood", f"svhn,lsun_r,textures,folder:{tmp_path}/my imgs",
        "hydra.run.dir=runs/digits_eval", *FAST)
    capsys.readouterr()
    rows = read_csv(bench / "runs/digits_eval/results.csv")
    names = ["svhn", "lsun_r", "textures", f"folder:{tmp_path}/my imgs", "average"]
    assert [r["ood"] for r in rows] == names * 2
    assert [int(r["n_ood"]) for r in rows[:5]] == [N_OOD, N_OOD, N_OOD, 12, 3 * N_OOD + 12]
    assert {r["dataset"] for r in rows} == {"digits"}
    assert list((bench / "data/cache").glob("textures-1x8x8-*.npy"))


def test_hydra_list_spelling_of_a_folder_set(bench, capsys):
    run(bench, "eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "ood=[folder:data/iSUN,svhn]",
        "hydra.run.dir=runs/folder_eval", *FAST)
    capsys.readouterr()
    rows = read_csv(bench / "runs/folder_eval/results.csv")
    assert [r["ood"] for r in rows[:3]] == ["folder:data/iSUN", "svhn", "average"]
    assert int(rows[0]["n_ood"]) == N_OOD


def test_ood_shorthand_quotes_paths_hydra_would_reject(bench, monkeypatch, capsys, tmp_path):
    from energy_cli.cli import expand_shorthands

    assert expand_shorthands(["--ood", "folder:/a/b,svhn"]) == ["ood=[folder:/a/b,svhn]"]
    assert expand_shorthands(["--ood", "folder:~/my imgs"]) == ['ood=["folder:~/my imgs"]']
    minidata.write_images(tmp_path / "home" / "my imgs", 5, (32, 32), seed=11)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run(bench, "eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "--ood", "folder:~/my imgs",
        "hydra.run.dir=runs/home_eval", *FAST)
    capsys.readouterr()
    rows = read_csv(bench / "runs/home_eval/results.csv")
    assert [(r["ood"], r["n_ood"]) for r in rows[:2]] == [("folder:~/my imgs", "5"), ("average", "5")]


def test_download_true_through_the_cli(bench, monkeypatch, capsys):
    import torchvision.datasets as tvd

    fetched = []

    def fake_cifar10(root, train=True, download=False):
        fetched.append((Path(root), download))
        minidata.write_cifar10(Path(root).parent)

    monkeypatch.setattr(tvd, "CIFAR10", fake_cifar10)
    run(bench, "train", "dataset=cifar10", "data_root=fresh", "download=true", "epochs=1", "hydra.run.dir=runs/dl",
        *FAST)
    assert "CIFAR-10: not in fresh/cifar10/cifar-10-batches-py, downloading" in capsys.readouterr().out
    assert fetched == [(Path("fresh/cifar10"), True)]
    assert load_checkpoint(bench / "runs/dl/checkpoint.pt")["finished"]


def test_cifar100_trains(bench, capsys):
    run(bench, "train", "dataset=cifar100", "epochs=1", "hydra.run.dir=runs/c100", *FAST)
    capsys.readouterr()
    ckpt = load_checkpoint(bench / "runs/c100/checkpoint.pt")
    assert (ckpt["dataset"], ckpt["num_classes"]) == ("cifar100", 100)
    assert ckpt["model"]["fc.weight"].shape[0] == 100


@pytest.mark.parametrize("kind", ["folder", "npy"])
def test_finetune_on_own_outliers(bench, capsys, kind):
    path = "data/LSUN" if kind == "folder" else "data/own.npy"
    if kind == "npy":
        np.save(bench / path, minidata.images_rgb(10, seed=5, size=40)[..., 0])   # grey 40x40, adapted to 3x32x32
    run(bench, "finetune", "dataset=cifar10", f"outliers={kind}", f"path={path}", "epochs=1",
        "ckpt=runs/train/checkpoint.pt", f"hydra.run.dir=runs/ft_{kind}", *FAST)
    out = capsys.readouterr().out
    assert f"{N_OOD if kind == 'folder' else 10} {kind} outliers" in out
    ckpt = load_checkpoint(bench / f"runs/ft_{kind}/checkpoint.pt")
    assert ckpt["finished"] and ckpt["config"]["outliers"]["path"] == path


@pytest.mark.parametrize("args,message", [
    (["train", "dataset=cifar10", "data_root=empty"],
     "CIFAR-10 not found at empty/cifar10/cifar-10-batches-py (data_root=empty): download "
     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it into empty/cifar10/, or add download=true"),
    (["train", "dataset=cifar100", "data_root=empty"], "cifar-100-python.tar.gz"),
    (["eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "data_root=partial", "--ood", "svhn,isun"],
     "iSUN not found at partial/iSUN (data_root=partial): download https://www.dropbox.com/s/ssz7qxfqae0cca5/iSUN.tar.gz"),
    (["finetune", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "data_root=partial", "outliers=tinyimages300k"],
     "300K random images not found at partial/300K_random_images.npy"),
    (["finetune", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "data_root=data", "outliers=tinyimages300k",
      "outliers.path=elsewhere/300K.npy"],
     "elsewhere/300K.npy not found; get it from https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy"),
    (["finetune", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "data_root=data", "outliers=folder"],
     "outliers=folder needs the path of its data: add path=FOLDER"),
    (["eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "ood=[folder:nowhere/imgs]"],
     "folder:nowhere/imgs: folder nowhere/imgs not found"),
    (["eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "data_root=broken", "--ood", "svhn"],
     "is not a readable SVHN .mat file"),
])
def test_missing_or_broken_data_is_one_line(bench, args, message, capsys):
    partial = bench / "partial"
    if not partial.exists():
        minidata.write_cifar10(partial)
        minidata.write_svhn(partial, n=5)
        minidata.write_cifar10(bench / "broken")
        (bench / "broken/svhn").mkdir(parents=True)
        (bench / "broken/svhn/test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    before = sorted(p for p in bench.rglob("*") if p.is_file())
    with pytest.raises(SystemExit) as exit_info:
        run(bench, *args, *FAST)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    after = sorted(p for p in bench.rglob("*") if p.is_file())
    assert after == before                              # nothing written, no run folder left behind


def test_paper_preset_runs_odin_and_mahalanobis(bench, capsys):
    """experiment=cifar10_wrn (WRN-40-2) on the miniature files: train one epoch, then eval score=all."""
    run(bench, "train", "experiment=cifar10_wrn", "epochs=1", "hydra.run.dir=runs/wrn", *FAST)
    run(bench, "eval", "experiment=cifar10_wrn", "ckpt=runs/wrn/checkpoint.pt", "score=all", "num_to_avg=2",
        "ood_samples=20", "hydra.run.dir=runs/wrn_eval", *FAST)
    out = capsys.readouterr().out
    assert "mahalanobis: fitted on" in out
    rows = read_csv(bench / "runs/wrn_eval/results.csv")
    assert {r["backbone"] for r in rows} == {"wrn40_2"}
    assert [(r["score"], r["ood"]) for r in rows] == [
        (s, o) for s in ("msp", "maxlogit", "energy", "odin", "mahalanobis") for o in SIX + ["average"]]
    assert {r["temperature"] for r in rows if r["score"] == "odin"} == {"1000"}
    for r in rows:
        assert 0 <= float(r["fpr95"]) <= 100 and 0 <= float(r["auroc"]) <= 100
    assert (bench / "runs/wrn/mahalanobis.pt").is_file()
