"""Every run keeps its output in <run folder>/<command>.log; epoch lines are logged with or without bars."""

import re

from conftest import FAST


def test_a_run_keeps_its_lines_in_its_log_file(cli, tmp_path):
    result = cli("train", "epochs=2", "hydra.run.dir=run", *FAST)     # FAST has progress=false
    assert result.code == 0, result.err
    epochs = [line for line in result.out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]     # always logged, bars or not
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    stamped = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[energy_cli[\w.]*\]\[INFO\] - (.*)")
    messages = [stamped.fullmatch(line).group(1) for line in lines]
    assert messages == result.out.splitlines()                        # the console's lines, each stamped
    assert messages[0] == "energy-ood train: run folder run" and messages[-2].startswith("pretrain: test accuracy")
    last_epoch = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[-1].split(",")
    assert messages[-1] == f"headline metric: test_acc = {float(last_epoch[3]):.6g}"   # what Hydra sweepers read


def test_each_sweep_job_keeps_its_own_log(cli, tmp_path):
    result = cli("train", "-m", "epochs=0", "seed=0,1", "hydra.sweep.dir=sweep", *FAST)
    assert result.code == 0, result.err
    for job in ("0", "1"):
        text = (tmp_path / "sweep" / job / "train.log").read_text()
        assert f"run folder sweep/{job}" in text and text.count("run folder") == 1
