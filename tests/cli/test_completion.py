"""Shell completion: `energy-ood -sc install=bash` registers the program itself, and the shell's query
completes the command word, then the keys and choices of that command's config."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.smoke
def test_install_registers_the_program_not_a_renamed_one(cli):
    for args in (("train", "-sc", "install=bash"), ("-sc", "install=bash")):
        result = cli(*args)
        assert result.code == 0, result.err
        last = result.out.strip().splitlines()[-1]
        assert last.startswith("COMP_WORDBREAKS=") and last.split()[-1] == "energy-ood"
        assert "energy-ood-" not in result.out


@pytest.mark.smoke
def test_query_completes_the_command_then_its_keys(cli, monkeypatch):
    def query(line: str, shell: str = "bash") -> list[str]:
        monkeypatch.setenv("COMP_LINE", line)
        result = cli("-sc", f"query={shell}")
        assert result.code == 0, result.err
        return result.out.split()

    assert query("energy-ood ") == ["train", "finetune", "eval", "report", "score"]
    assert query("energy-ood f") == ["finetune"]
    assert query("energy-ood nothing x") == []
    assert query("energy-ood train dataset=ci") == ["dataset=cifar10", "dataset=cifar100"]
    assert query("energy-ood finetune m_") == ["m_in=", "m_out="]
    assert query("energy-ood eval odin.", "fish") == ["odin.grid.", "odin.noise=", "odin.temperature=", "odin.tune="]
    assert "m_in=" not in query("energy-ood train m")           # train has no margins
    assert query("energy-ood train s") == ["seed=", "sync_bn="]  # the config schemas are no config group


@pytest.mark.smoke
def test_an_unknown_shell_is_one_line(cli):
    result = cli("train", "-sc", "install=tcsh")
    assert result.code == 2 and result.err.count("\n") == 1 and "bash, zsh, fish" in result.err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_with_the_installed_script(tmp_path):
    """The real thing: bash evaluates the install script and calls its completion function on a typed line."""
    program = tmp_path / "bin" / "energy-ood"
    program.parent.mkdir()
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m energy_cli "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    script = """
eval "$(energy-ood -sc install=bash)"
complete -p energy-ood
COMP_LINE="energy-ood train backbone=wrn"; COMP_WORDS=($COMP_LINE); COMP_CWORD=2; COMP_POINT=${#COMP_LINE}
hydra_bash_completion; printf '%s\\n' "${COMPREPLY[@]}"
"""
    env = {**os.environ, "PATH": f"{program.parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300).stdout.splitlines()
    assert out[0].split()[-1] == "energy-ood" and "hydra_bash_completion" in out[0]
    assert out[1:] == ["backbone=wrn40_2"]
