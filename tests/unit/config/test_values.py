import pytest

from energy_cli.config.values import (
    Margins,
    check_device,
    check_precision,
    parse_margins,
)
from energy_cli.errors import UserError


def test_margins_are_parsed_into_one_typed_value():
    assert parse_margins(-23, -5.0) == Margins(-23.0, -5.0)
    assert parse_margins("auto", -5) == Margins(None, -5.0) and parse_margins("auto", "auto").any_auto
    assert not Margins(-1.0, 2.0).any_auto
    assert Margins(None, -5.0).with_measured(-11.5, -4.4) == (-11.5, -5.0)
    assert Margins(-20.0, None).with_measured(-11.5, -4.4) == (-20.0, -4.4)
    with pytest.raises(UserError, match=r"m_in=-5 must be below m_out=-5 "):
        parse_margins(-5, -5)
    for bad in ("foo", True, float("nan"), None):
        with pytest.raises(UserError, match="must be a number or auto"):
            parse_margins(bad, -5)


def test_device_and_precision_have_one_wording():
    assert [check_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]
    for bad in ("tpu", "cuda:x", "mps", "cuda:"):
        with pytest.raises(UserError, match=rf"^device={bad} is not known; choose one of: auto, cpu, cuda, cuda:N$"):
            check_device(bad)
    assert check_precision("bf16") == "bf16"
    with pytest.raises(UserError, match=r"^precision=fp16 is not known; choose one of: auto, fp32, bf16, int8$"):
        check_precision("fp16")


def test_the_runtime_refuses_with_the_same_words():
    torch = pytest.importorskip("torch")
    from energy_cli.engine.runtime import resolve_device, resolve_precision

    with pytest.raises(UserError, match=r"^device=tpu is not known; choose one of: auto, cpu, cuda, cuda:N$"):
        resolve_device("tpu")
    with pytest.raises(UserError, match=r"^precision=fp16 is not known"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) is None
