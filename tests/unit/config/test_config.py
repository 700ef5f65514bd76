import pytest
from omegaconf import OmegaConf

from energy_cli.commands.validate import validate
from energy_cli.errors import UserError


@pytest.mark.parametrize("command", ["train", "finetune", "eval"])
def test_every_command_composes_and_resolves(compose, command):
    cfg = compose(command)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["command"] == command
    assert resolved["dataset"]["name"] == "digits" and resolved["backbone"]["name"] == "small_cnn"
    assert resolved["seed"] == 0 and resolved["temperature"] == 1.0
    validate(cfg)


def test_train_defaults_follow_the_dataset_recipe(compose):
    cfg = compose("train")
    assert cfg.epochs == cfg.dataset.recipe.train.epochs
    assert (cfg.momentum, cfg.weight_decay, cfg.nesterov) == (0.9, 5e-4, True)
    cifar = compose("train", ["dataset=cifar10", "backbone=wrn40_2"])
    assert (cifar.epochs, cifar.lr, cifar.batch_size) == (100, 0.1, 128)   # the paper's pretraining recipe


def test_finetune_defaults(compose):
    cfg = compose("finetune")
    assert cfg.loss.name == "energy" and cfg.loss.weight == 0.1
    assert cfg.m_in == cfg.dataset.m_in and cfg.m_out == cfg.dataset.m_out
    oe = compose("finetune", ["loss=oe"])
    assert oe.loss.name == "oe" and oe.loss.weight == 0.5
    c10 = compose("finetune", ["dataset=cifar10"])
    assert (c10.m_in, c10.m_out, c10.epochs, c10.lr, c10.outlier_batch_size) == (-23, -5, 10, 0.001, 256)
    c100 = compose("finetune", ["dataset=cifar100"])
    assert (c100.m_in, c100.m_out) == (-27, -5)
    assert compose("finetune", ["m_in=-23", "m_out=-5"]).m_in == -23


def test_eval_defaults(compose):
    cfg = compose("eval")
    assert list(cfg.ood) == list(cfg.dataset.ood)
    assert list(cfg.score) == ["msp", "energy"]
    assert (cfg.num_to_avg, cfg.ood_samples, cfg.save_scores) == (1, "all", False)


def test_data_root_comes_from_the_environment(compose, monkeypatch):
    monkeypatch.setenv("ENERGY_OOD_DATA", "/somewhere/data")
    assert compose("train").data_root == "/somewhere/data"


@pytest.mark.parametrize("command,override,message", [
    ("train", "temperature=0", "temperature=0 must be > 0"),
    ("train", "epochs=-1", "epochs=-1 must be >= 0"),
    ("train", "batch_size=0", "batch_size=0 must be >= 1"),
    ("train", "lr=0", "lr=0 must be > 0"),
    ("train", "lr=abc", "lr='abc' must be a number"),
    ("train", "momentum=1.5", "momentum=1.5 must be in [0, 1)"),
    ("train", "precision=fp8", "precision=fp8 is not known"),
    ("train", "device=tpu", "device=tpu is not known"),
    ("finetune", "m_in=-3", "m_in=-3 must be below m_out=-5"),
    ("finetune", "loss.weight=-1", "loss.weight=-1 must be >= 0"),
    ("finetune", "outlier_batch_size=0", "outlier_batch_size=0 must be >= 1"),
    ("eval", "ood=[nowhere]", "unknown OOD set 'nowhere'"),
    ("eval", "score=[foo]", "score=foo is not known"),
    ("eval", "num_to_avg=0", "num_to_avg=0 must be >= 1"),
    ("eval", "ood_samples=some", "ood_samples='some' must be a whole number"),
])
def test_validation_names_the_key(compose, command, override, message):
    with pytest.raises(UserError) as info:
        validate(compose(command, [override]))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_report_and_score_compose(compose):
    report = compose("report")
    assert (report.command, list(report.paths), report.plots) == ("report", [], True)
    validate(report)
    score = compose("score")
    assert (score.command, list(score.paths), score.ckpt, score.threshold) == ("score", [], None, None)
    assert score.dataset.name == "digits"
    validate(score)
    assert compose("eval").plots is False


@pytest.mark.parametrize("command,override,message", [
    ("eval", "plots=maybe", "plots=maybe must be true or false"),
    ("report", "plots=sometimes", "plots=sometimes must be true or false"),
    ("score", "threshold=high", "threshold='high' must be a number"),
])
def test_validation_of_the_new_keys(compose, command, override, message):
    with pytest.raises(UserError) as info:
        validate(compose(command, [override]))
    assert message in str(info.value)
