"""m_in=auto / m_out=auto: margins measured from the starting model's energies."""

import json

import numpy as np
import pytest
import torch
from conftest import FAST

from energy_cli.cli import main
from energy_cli.commands.validate import validate
from energy_cli.data.batches import Normalizer
from energy_cli.data.embedded import china_patches, load_digits_split
from energy_cli.errors import UserError
from energy_cli.models import build_model
from energy_cli.ood.margins import auto_margins
from energy_cli.ood.scores import free_energy
from energy_cli.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_auto_margins_rule_by_hand():
    e_in = torch.tensor([-12.0, -10.0, -11.5, -10.5])                  # mean -11
    e_out = torch.arange(-20.0, 1.0)                                   # -20..0: 95th percentile = -1
    assert auto_margins(e_in, e_out) == (-11.0, -1.0)
    e_out = torch.tensor([-9.0, -8.0, -4.0])                           # 95th: -8 + 0.9 * 4 = -4.4 (interpolated)
    assert auto_margins(torch.tensor([-12.004, -11.0]), e_out) == (-11.5, -4.4)
    assert auto_margins(e_in, e_out)[1] == pytest.approx(np.percentile([-9, -8, -4], 95))


def test_auto_is_a_valid_margin_value(compose):
    validate(compose("finetune", ["m_in=auto", "m_out=auto"]))
    validate(compose("finetune", ["m_in=-20", "m_out=auto"]))
    with pytest.raises(UserError, match="m_in='foo' must be a number or auto"):
        validate(compose("finetune", ["m_in=foo"]))


def pretrained_energies(path):
    """Free energies of the digits training images and of the china patches under the saved model, recomputed here."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    norm = Normalizer(ckpt["mean"], ckpt["std"])
    train, _ = load_digits_split()
    outliers = china_patches(5000, (1, 8, 8), seed=0)
    with torch.no_grad():
        return free_energy(model(norm(train.images))), free_energy(model(norm(outliers.images)))


def test_finetune_with_auto_margins(pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["finetune", f"ckpt={pretrained}", "m_in=auto", "m_out=auto", "epochs=1", "hydra.run.dir=ft", *FAST])
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "ft" / "margins.json").read_text())
    m_in, m_out = record["m_in"], record["m_out"]
    assert f"m_in = {m_in:g} (auto: mean ID energy)" in out and f"m_out = {m_out:g} (auto: 95th percentile" in out

    e_in, e_out = pretrained_energies(pretrained)
    # the rule's values on this fixed model (rounded to 0.01 by the rule; tiny float differences allowed)
    assert m_in == pytest.approx(float(e_in.mean()), abs=0.0051)
    assert m_out == pytest.approx(float(np.percentile(e_out.numpy(), 95)), abs=0.0051)
    # ... which lie between the measured ID and outlier energies
    assert e_in.min() <= m_in <= e_in.max() and e_out.min() <= m_out <= e_out.max()
    assert float(e_in.mean()) - 0.01 <= m_in < m_out and m_out >= float(e_out.mean())
    assert record["id_energy"]["n"] == 1437 and record["outlier_energy"]["n"] == 5000

    ckpt = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    assert (ckpt["extra"]["m_in"], ckpt["extra"]["m_out"]) == (m_in, m_out)
    # the config keeps `auto` (so that a resumed run composes the same config); the values live in `extra`
    assert (ckpt["config"]["m_in"], ckpt["config"]["m_out"]) == ("auto", "auto")
    assert ckpt["extra"]["auto_margins"]["rule"].startswith("m_in = mean ID training energy")
    assert ckpt["finished"] and ckpt["epoch"] == 1

    # one margin given, the other measured; a given m_out below the measured m_in is refused in one line
    main(["finetune", f"ckpt={pretrained}", "m_in=-30", "m_out=auto", "epochs=0", "hydra.run.dir=ft2", *FAST])
    capsys.readouterr()
    extra = load_checkpoint(tmp_path / "ft2" / "checkpoint.pt")["extra"]
    assert (extra["m_in"], extra["m_out"]) == (-30.0, m_out)
    with pytest.raises(SystemExit) as info:
        main(["finetune", f"ckpt={pretrained}", "m_in=auto", "m_out=-100", "epochs=0", "hydra.run.dir=ft3", *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"m_in={m_in:g} (auto) is not below m_out=-100 (given)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ft3" / "checkpoint.pt").exists()
