"""Issue 14's classes of failure, each through the CLI: a run folder held by another process, derived files that
must prove which checkpoint bytes they came from, damaged checkpoints, output-folder errors, failed runs that
leave nothing behind, malformed results.csv in report, and resuming by repeating the run's own folder."""

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, own_checkpoint
from PIL import Image
from test_resume import SMALL, interrupt_at_call, locked_by_another_process

from energy_cli.runs.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_in_use_by_another_process_is_refused_and_untouched(cli, tmp_path):
    (tmp_path / "run").mkdir()
    with locked_by_another_process(tmp_path / "run"):
        before = files_of(tmp_path / "run")
        for command in (["train", "epochs=1", *FAST], ["eval", "ckpt=missing.pt", *FAST], ["report", "."]):
            result = cli(*command, "hydra.run.dir=run")
            assert result.code == 2 and "in use by another energy-ood process" in result.err, result.err
            assert len(result.err.strip().splitlines()) == 1
        after = files_of(tmp_path / "run")
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == \
           {k: v for k, v in before.items() if not k.endswith(".lock")}
    assert not (tmp_path / "run" / ".hydra").exists()


def test_score_refuses_thresholds_of_other_checkpoint_bytes_or_another_temperature(cli, pretrained, tmp_path):
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    assert cli("eval", f"ckpt={ckpt}", "ood=[gaussian]", "hydra.run.dir=ev", *FAST).code == 0
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(pics / "a.png")
    assert cli("score", str(pics), f"ckpt={ckpt}", "hydra.run.dir=s1", *FAST).code == 0
    hot = cli("score", str(pics), f"ckpt={ckpt}", "temperature=2", "hydra.run.dir=s2", *FAST)
    assert hot.code == 2 and "measured at temperature=1, not 2" in hot.err, hot.err
    # another checkpoint's bytes in the same place (a run overwritten or resumed): the thresholds no longer apply
    data = ckpt.read_bytes()
    loaded = load_checkpoint(ckpt)
    loaded["epoch"] = loaded["epoch"] + 1          # same weights, other bytes
    save_checkpoint(ckpt, loaded)
    assert ckpt.read_bytes() != data
    moved = cli("score", str(pics), f"ckpt={ckpt}", "hydra.run.dir=s3", *FAST)
    assert moved.code == 2 and "other checkpoint bytes" in moved.err and "eval" in moved.err, moved.err
    assert not (tmp_path / "s3").exists()


def test_a_flipped_bit_is_reported_as_damaged(cli, pretrained, tmp_path):
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as archive:   # a byte inside the stored weights (torch stores members uncompressed)
        info = max(archive.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    result = cli("eval", f"ckpt={ckpt}", "ood=[gaussian]", "hydra.run.dir=ev", *FAST)
    assert result.code == 2 and "is damaged" in result.err and "CRC" in result.err, result.err
    assert not (tmp_path / "ev").exists()


def test_output_folder_errors_are_one_line(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    as_file = cli("train", "epochs=0", "hydra.run.dir=afile", *FAST)
    assert as_file.code == 2 and len(as_file.err.strip().splitlines()) == 1, as_file.err
    assert (tmp_path / "afile").read_text() == "x"
    long = cli("train", "epochs=0", f"hydra.run.dir={'x' * 300}", *FAST)
    assert long.code == 2 and len(long.err.strip().splitlines()) == 1, long.err
    if os.geteuid() != 0:    # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            ro = cli("train", "epochs=0", "hydra.run.dir=ro/run", *FAST)
            assert ro.code == 2 and len(ro.err.strip().splitlines()) == 1, ro.err
        finally:
            locked.chmod(0o700)


def test_a_failed_eval_in_a_fresh_folder_leaves_nothing(cli, tmp_path):
    result = cli("eval", "ckpt=missing.pt", *FAST)
    assert result.code == 2 and "checkpoint not found" in result.err
    assert list(tmp_path.iterdir()) == []
    named = cli("eval", "ckpt=missing.pt", "hydra.run.dir=new/run", *FAST)
    assert named.code == 2 and not (tmp_path / "new").exists()


def test_report_skips_malformed_results_with_a_note(cli, pretrained, tmp_path):
    ckpt = own_checkpoint(pretrained, tmp_path / "model")
    assert cli("eval", f"ckpt={ckpt}", "ood=[gaussian]", "hydra.run.dir=runs/good", *FAST).code == 0
    bad = tmp_path / "runs" / "bad"
    shutil.copytree(tmp_path / "runs" / "good" / ".hydra", bad / ".hydra")
    lines = (tmp_path / "runs" / "good" / "results.csv").read_text().splitlines()
    (bad / "results.csv").write_text("\n".join([lines[0], lines[1].replace(lines[1].split(",")[-1], "oops"),
                                                lines[2].split(",", 3)[0]]) + "\n")
    result = cli("report", "runs", "hydra.run.dir=rep")
    assert result.code == 0, result.err
    assert "skipped" in result.out and "bad/results.csv" in result.out
    assert (tmp_path / "rep" / "report.md").is_file()


def test_resume_by_repeating_the_runs_own_folder(cli, tmp_path):
    with interrupt_at_call(30):
        assert cli("train", *SMALL, "hydra.run.dir=run").code == 130
    again = cli("train", *SMALL, "hydra.run.dir=run", "resume=true")
    assert again.code == 0, again.err
