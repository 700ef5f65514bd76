"""The paper presets compose for every command with the paper's values; the outlier groups' path keys."""

import pytest
from omegaconf import OmegaConf

from energy_cli.commands.validate import validate

PAPER = {"cifar10_wrn": ("cifar10", 10, -23.0), "cifar100_wrn": ("cifar100", 100, -27.0)}
SIX = ["textures", "svhn", "places365", "lsun_c", "lsun_r", "isun"]


@pytest.mark.parametrize("preset", list(PAPER))
@pytest.mark.parametrize("command", ["train", "finetune", "eval"])
def test_preset_composes_for_every_command(compose, preset, command):
    dataset, classes, m_in = PAPER[preset]
    cfg = compose(command, [f"experiment={preset}"])
    validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert (cfg.dataset.name, cfg.dataset.num_classes) == (dataset, classes)
    assert dict(cfg.backbone) == {"name": "wrn40_2", "depth": 40, "widen_factor": 2, "dropout": 0.3}
    assert cfg.outliers.name == "tinyimages300k"
    assert dict(cfg.dataset.augment) == {"crop_pad": 4, "flip": True}
    assert cfg.precision == "fp32"   # the paper trains in fp32; bf16 training changes the results
    assert cfg.dataset.mean == pytest.approx([125.3 / 255, 123.0 / 255, 113.9 / 255], abs=1e-4)
    assert cfg.dataset.std == pytest.approx([63.0 / 255, 62.1 / 255, 66.7 / 255], abs=1e-4)
    if command == "train":
        assert (cfg.epochs, cfg.lr, cfg.batch_size) == (100, 0.1, 128)
        assert (cfg.momentum, cfg.nesterov, cfg.weight_decay) == (0.9, True, 5e-4)
    if command == "finetune":
        assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.outlier_batch_size) == (10, 0.001, 128, 256)
        assert (cfg.loss.name, cfg.loss.weight, cfg.m_in, cfg.m_out) == ("energy", 0.1, m_in, -5.0)
    if command == "eval":
        assert list(cfg.ood) == SIX and (cfg.num_to_avg, cfg.ood_samples) == (10, 2000)
    # no command gets keys it does not use
    assert ("num_to_avg" in resolved) == (command == "eval")
    assert ("m_in" in resolved) == (command == "finetune")


def test_overrides_after_a_preset_win(compose):
    cfg = compose("train", ["experiment=cifar10_wrn", "epochs=1", "backbone=small_cnn"])
    assert (cfg.epochs, cfg.backbone.name, cfg.dataset.name) == (1, "small_cnn", "cifar10")
    assert compose("train", ["experiment=cifar10_wrn", "precision=bf16"]).precision == "bf16"
    ev = compose("eval", ["experiment=cifar100_wrn", "num_to_avg=3", "ood_samples=20"])
    assert (ev.num_to_avg, ev.ood_samples) == (3, 20)


def test_eval_protocol_defaults_without_a_preset(compose):
    for dataset in ("digits", "cifar10"):
        cfg = compose("eval", [f"dataset={dataset}"])
        assert (cfg.num_to_avg, cfg.ood_samples) == (1, "all")


@pytest.mark.parametrize("group", ["folder", "npy"])
def test_outlier_path_both_spellings(compose, group):
    short = compose("finetune", [f"outliers={group}", "path=/x/imgs"])
    assert (short.outliers.name, short.outliers.path) == (group, "/x/imgs")
    dotted = compose("finetune", [f"outliers={group}", "outliers.path=/y"])
    assert dotted.outliers.path == "/y"
    assert compose("finetune", [f"outliers={group}"]).outliers.path is None


def test_path_key_is_null_until_a_path_outlier_group_reads_it(compose):
    assert compose("finetune").path is None and "path" not in compose("finetune").outliers
    assert compose("finetune", ["outliers=folder", "path=/imgs"]).outliers.path == "/imgs"
    assert compose("finetune", ["outliers=tinyimages300k", "outliers.path=/z.npy"]).outliers.path == "/z.npy"


def test_cache_dir_defaults_under_data_root(compose):
    assert compose("eval", ["data_root=/d"]).cache_dir == "/d/cache"
    assert compose("eval", ["cache_dir=null"]).cache_dir is None
