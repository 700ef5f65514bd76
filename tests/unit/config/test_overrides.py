import pytest

from energy_cli.config.overrides import key_of, last_value, quote, sets_key, value_of

ODD = ["plain/path", "with space", "x=1,2:3", "it's", "back\\slash\\", "${not.an.interpolation}", "[brackets]",
       'say "hi"', "2024", "null", "true", "-1", "inf", "~/home"]


@pytest.mark.parametrize("text", ODD)
@pytest.mark.parametrize("mark", ["'", '"'])
def test_quote_reads_back_unchanged(text, mark, compose):
    if "${" not in text:   # Hydra keeps OmegaConf's escape (\${); OmegaConf removes it when composing
        assert value_of(f"resume={quote(text, mark)}") == text
    assert compose("train", [f"resume={quote(text, mark)}"]).resume == text     # through OmegaConf too


def test_plain_values_stay_unquoted():
    assert quote("outputs/train/2026-01-01_10-00-00/checkpoint.pt") == "outputs/train/2026-01-01_10-00-00/checkpoint.pt"
    assert quote("folder:/a/b") == "folder:/a/b"
    assert quote("2024") == "'2024'"                  # would read back as a number


def test_reading_overrides():
    args = ["-m", "+hydra.run.dir=a", "resume='x y'", "seed=1", "resume=null", "overwrite=true"]
    assert key_of("+hydra.run.dir=a") == "hydra.run.dir" and key_of("~seed") == "seed"
    assert last_value(args, "resume") == "null" and last_value(args, "overwrite") == "true"
    assert last_value(args, "hydra.run.dir") == "a" and last_value(args, "lr") is None
    assert last_value(["resume='x y'"], "resume") == "x y"
    assert sets_key(args, "seed") and not sets_key(args, "m")
