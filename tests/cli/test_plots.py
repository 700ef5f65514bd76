"""Pictures: eval plots=true draws valid PNG files, and the plotting functions write readable images."""

import numpy as np
import pytest
from conftest import FAST, own_checkpoint
from PIL import Image

from energy_cli.cli import main
from energy_cli.reporting.plots import heatmap, roc_curves, score_histograms

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def assert_png(path, min_width=200, min_height=150):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width >= min_width and height >= min_height and width < 4000 and height < 4000
    assert pixels.std() > 10          # not a blank canvas
    return width, height


def test_plot_functions_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    id_s = {"energy": rng.normal(8, 2, 300), "msp": rng.uniform(0.5, 1, 300)}
    ood_s = {"energy": rng.normal(4, 2, 200), "msp": rng.uniform(0.1, 1, 200)}
    score_histograms(tmp_path / "h.png", id_s, ood_s, "noise", {"energy": 5.0, "msp": 0.6}, "title")
    w2, _ = assert_png(tmp_path / "h.png")
    score_histograms(tmp_path / "h1.png", {"energy": id_s["energy"]}, {"energy": ood_s["energy"]}, "noise")
    w1, _ = assert_png(tmp_path / "h1.png")
    assert w2 > 1.6 * w1              # two panels side by side
    roc_curves(tmp_path / "r.png", {"energy": (np.array([0, 0.2, 1]), np.array([0, 0.9, 1]))}, "noise",
               points={"energy": (0.3, 0.95)})
    assert_png(tmp_path / "r.png")
    heatmap(tmp_path / "m.png", np.array([[10.0, 20.0], [np.nan, 5.0]]), ["-12", "-11"], ["-7", "-5"], "m_in", "m_out",
            "title")
    assert_png(tmp_path / "m.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_eval_plots_true_draws_histograms_and_roc_curves(pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    main(["eval", f"ckpt={ckpt}", "--ood", "gaussian,flower_patches", "plots=true", "hydra.run.dir=ev", *FAST])
    out = capsys.readouterr().out
    assert "drew 4 pictures" in out
    for name in ("hist_gaussian.png", "hist_flower_patches.png", "roc_gaussian.png", "roc_flower_patches.png"):
        assert_png(tmp_path / "ev" / name)
    width, height = Image.open(tmp_path / "ev" / "hist_gaussian.png").size
    assert width > 1.5 * height       # msp and energy panels side by side
    main(["eval", f"ckpt={ckpt}", "--ood", "gaussian", "hydra.run.dir=ev2", *FAST])
    assert not list((tmp_path / "ev2").glob("*.png"))     # plots=false by default
