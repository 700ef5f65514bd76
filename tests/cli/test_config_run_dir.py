"""A run folder set in a config file (a user's own experiment preset in a --config-dir) is where the run
writes; the CLI claims a fresh folder only when no config names one."""

from pathlib import Path

from conftest import FAST

PRESET = """# @package _global_
hydra:
  run:
    dir: my_runs/exp1
  sweep:
    dir: my_sweeps/s1
epochs: 0
"""


def user_config(root: Path) -> Path:
    folder = root / "my_conf"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text(PRESET)
    return folder


def test_a_run_folder_from_a_config_file_is_honoured(cli, tmp_path):
    user_config(tmp_path)
    first = cli("train", "-cd", "my_conf", "experiment=mine", *FAST)
    assert first.code == 0, first.err
    assert "run folder my_runs/exp1" in first.out
    assert (tmp_path / "my_runs" / "exp1" / "checkpoint.pt").is_file()
    assert not (tmp_path / "outputs").exists()          # no folder claimed besides the configured one
    again = cli("train", "-cd", "my_conf", "experiment=mine", *FAST)
    assert again.code == 2 and again.err.count("\n") == 1
    assert "hydra.run.dir=my_runs/exp1 already holds checkpoint.pt" in again.err
    assert cli("train", "-cd", "my_conf", "experiment=mine", "overwrite=true", *FAST).code == 0


def test_a_sweep_folder_from_a_config_file_is_honoured(cli, tmp_path):
    user_config(tmp_path)
    result = cli("train", "-m", "-cd", "my_conf", "experiment=mine", "seed=0,1", *FAST)
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "my_sweeps" / "s1").iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "multirun").exists()


def test_without_a_configured_folder_a_fresh_one_is_claimed(cli, tmp_path):
    assert cli("train", "epochs=0", *FAST).code == 0
    assert len(list((tmp_path / "outputs" / "train").iterdir())) == 1
