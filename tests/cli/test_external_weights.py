"""Models and weights from elsewhere through the CLI: a torchvision ResNet-18's plain state_dict (.pt and
.safetensors) evaluated and fine-tuned with ckpt=PATH, a user's `_target_` class (tests/usernets.py) trained
and evaluated, also from a backbone YAML of the user's own without a name, and weights that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST, read_csv
from safetensors_writer import save_safetensors

from energy_cli.models import build_model
from energy_cli.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RESNET = ["backbone=torchvision", "backbone.arch=resnet18", "dataset=digits"]
SCORES = ["ood=[gaussian]", "score=[msp,energy,mahalanobis]"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random weights of torchvision's resnet18 for 1x8x8 digits, as a state_dict .pt and as .safetensors,
    each in a folder of its own (eval writes its caches next to the weights)."""
    torch.manual_seed(0)
    net = build_model({"name": "torchvision", "arch": "resnet18"}, 10, 1, 8).net
    root = tmp_path_factory.mktemp("weights")
    (root / "pt").mkdir()
    (root / "st").mkdir()
    torch.save(net.state_dict(), root / "pt" / "resnet18.pt")
    save_safetensors(net.state_dict(), root / "st" / "resnet18.safetensors")
    return {"pt": root / "pt" / "resnet18.pt", "st": root / "st" / "resnet18.safetensors"}


def scores_of(path: Path) -> list[tuple[str, ...]]:
    return [tuple(v for k, v in row.items() if k != "checkpoint") for row in read_csv(path)]


def test_eval_state_dict_and_safetensors_give_the_same_results(cli, weights, tmp_path):
    result = cli("eval", f"ckpt={weights['pt']}", *RESNET, *SCORES, "hydra.run.dir=ev_pt", *FAST)
    assert result.code == 0, result.err
    rows = read_csv(tmp_path / "ev_pt" / "results.csv")
    assert {r["backbone"] for r in rows} == {"torchvision:resnet18"} and {r["stage"] for r in rows} == {"external"}
    assert {r["score"] for r in rows} == {"msp", "energy", "mahalanobis"}
    result = cli("eval", f"ckpt={weights['st']}", *RESNET, *SCORES, "hydra.run.dir=ev_st", *FAST)
    assert result.code == 0, result.err
    assert scores_of(tmp_path / "ev_pt" / "results.csv") == scores_of(tmp_path / "ev_st" / "results.csv")


def test_finetune_starts_from_a_state_dict(cli, weights, tmp_path):
    result = cli("finetune", f"ckpt={weights['pt']}", *RESNET, "epochs=1", "outliers.n=256", "hydra.run.dir=ft", *FAST)
    assert result.code == 0, result.err
    ckpt = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    assert ckpt["stage"] == "energy" and ckpt["finished"]
    assert ckpt["backbone"]["name"] == "torchvision" and ckpt["backbone"]["arch"] == "resnet18"
    assert ckpt["extra"]["init_checkpoint"] == str(weights["pt"].resolve())
    assert all(k.startswith("net.") for k in ckpt["model"])       # the adapter's names, as energy-ood saves them


def test_a_users_target_class_trains_and_evaluates(cli, tmp_path):
    user = ["backbone=custom", "backbone._target_=usernets.TinyNet", "+backbone.width=4"]
    assert cli("train", *user, "epochs=1", "hydra.run.dir=tr", *FAST).code == 0
    ckpt = load_checkpoint(tmp_path / "tr" / "checkpoint.pt")
    assert ckpt["backbone"] == {"name": "custom", "_target_": "usernets.TinyNet", "head": None, "width": 4}
    result = cli("eval", "ckpt=tr/checkpoint.pt", "backbone=custom", "ood=[gaussian]", "hydra.run.dir=ev", *FAST)
    assert result.code == 0, result.err
    assert {r["backbone"] for r in read_csv(tmp_path / "ev" / "results.csv")} == {"custom:TinyNet"}


def test_a_users_backbone_yaml_without_a_name(cli, tmp_path):
    (tmp_path / "conf" / "backbone").mkdir(parents=True)
    (tmp_path / "conf" / "backbone" / "mine.yaml").write_text("_target_: usernets.tiny_net\nwidth: 3\n")
    mine = ["--config-dir", str(tmp_path / "conf"), "backbone=mine"]
    assert cli("train", *mine, "epochs=1", "hydra.run.dir=outputs/tr", *FAST).code == 0
    result = cli("eval", *mine, "ood=[gaussian]", "hydra.run.dir=ev", *FAST)      # finds outputs/tr by its target
    assert result.code == 0, result.err
    assert {r["backbone"] for r in read_csv(tmp_path / "ev" / "results.csv")} == {"tiny_net"}


def test_weights_that_do_not_fit_are_one_line_and_write_nothing(cli, weights, tmp_path):
    before = sorted(p.relative_to(weights["pt"].parent.parent) for p in weights["pt"].parent.parent.rglob("*"))
    result = cli("eval", f"ckpt={weights['pt']}", "backbone=torchvision", "backbone.arch=resnet34", *SCORES,
                 "hydra.run.dir=ev", *FAST)
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert "is not an energy-ood checkpoint, and its weights do not fit backbone torchvision:resnet34" in line
    assert "missing keys layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias (+77 more)" in line  # raw names
    assert not (tmp_path / "ev").exists()
    assert sorted(p.relative_to(weights["pt"].parent.parent) for p in weights["pt"].parent.parent.rglob("*")) == before
