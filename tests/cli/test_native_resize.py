"""ood_resize=native: LSUN-C, LSUN-R and iSUN fed at their stored size (batched by size), as the paper's code
feeds them, beside the default resize + centre crop; on miniature files in the public layouts."""

import logging
import os
from pathlib import Path

import minidata
import numpy as np
import pytest
import torch
from conftest import FAST, read_csv

from energy_cli.cli import main
from energy_cli.data import files
from energy_cli.data.batches import Normalizer
from energy_cli.data.folders import load_folder_native
from energy_cli.models import build_model
from energy_cli.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(root: Path, *args: str) -> None:
    old = os.getcwd()
    os.chdir(root)
    try:
        main(list(args))
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """CIFAR-10 in miniature, LSUN-C with two image sizes (36 and 40 pixels), iSUN at 32 pixels, and a
    one-epoch CIFAR-10 model."""
    root = tmp_path_factory.mktemp("native")
    minidata.write_cifar10(root / "data")
    minidata.write_images(root / "data/LSUN/test", 6, (36, 36), seed=1)
    minidata.write_images(root / "data/LSUN/test2", 4, (40, 40), seed=2, grey_every=2)
    minidata.write_images(root / "data/iSUN/iSUN_patches", 5, (32, 32), seed=3, suffix=".jpeg")
    run(root, "train", "dataset=cifar10", "epochs=1", "hydra.run.dir=runs/train", *FAST)
    return root


def test_folder_native_groups_by_size_in_file_order(bench, caplog):
    caplog.set_level(logging.INFO, logger="energy_cli")
    parts = load_folder_native(bench / "data/LSUN", "lsun_c", 3)
    assert "lsun_c: decoded 10 images from" in caplog.text
    assert [p.images.shape for p in parts] == [(6, 3, 36, 36), (4, 3, 40, 40)]
    paths = files.list_images(bench / "data/LSUN")
    assert torch.equal(parts[1].images[1], files.decode_native(paths[7], 3))
    grey = files.decode_native(paths[6], 3)                     # a grey file, repeated to RGB
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_native_feeds_stored_sizes_and_resize_stays_the_default(bench, capsys):
    run(bench, "eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "--ood", "lsun_c,isun",
        "ood_resize=native", "save_scores=true", "hydra.run.dir=runs/native", "data_root=data", "cache_dir=null", *FAST)
    run(bench, "eval", "dataset=cifar10", "ckpt=runs/train/checkpoint.pt", "--ood", "lsun_c,isun",
        "save_scores=true", "hydra.run.dir=runs/resized", "data_root=data", "cache_dir=null", *FAST)
    out = capsys.readouterr().out
    assert "lsun_c: decoded 10 images from" in out and "at their stored size (6 at 36x36, 4 at 40x40)" in out
    rows = {(r["score"], r["ood"]): r for r in read_csv(bench / "runs/native/results.csv")}
    assert rows[("energy", "lsun_c")]["n_ood"] == "10" and rows[("energy", "isun")]["n_ood"] == "5"

    ckpt = load_checkpoint(bench / "runs/train/checkpoint.pt")
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    norm = Normalizer(ckpt["mean"], ckpt["std"])
    native = np.load(bench / "runs/native/scores.npz")
    resized = np.load(bench / "runs/resized/scores.npz")
    with torch.no_grad():
        want = torch.cat([model(norm(p.images)) for p in load_folder_native(bench / "data/LSUN", "lsun_c", 3)])
    assert np.allclose(native["lsun_c/logits"], want.numpy(), atol=1e-5)
    assert not np.allclose(native["lsun_c/logits"], resized["lsun_c/logits"], atol=1e-3)   # 36/40 px vs 32 px
    assert np.array_equal(native["isun/energy"], resized["isun/energy"])                   # stored at 32 px already
    assert np.array_equal(native["id/energy"], resized["id/energy"])
