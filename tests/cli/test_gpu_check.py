"""scripts/gpu_check.sh stays runnable where no GPU is lent: valid bash, the test files it names exist and hold
GPU tests, the bench flags it uses exist, and without a GPU it says so and exits 2."""

import re
import shutil
import subprocess

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"

pytestmark = [pytest.mark.smoke, pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def test_gpu_check_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_test_files_it_names_exist_and_are_gpu_tests():
    text = SCRIPT.read_text()
    (names,) = re.findall(r"GPU_TESTS=\(([^)]*)\)", text)
    files = names.split()
    assert files
    for name in files:
        path = REPO / name
        assert path.is_file(), name
        assert "pytest.mark.gpu" in path.read_text(), name


def test_the_bench_flags_it_uses_exist():
    bench = (REPO / "scripts" / "bench.py").read_text()
    for flag in ("--device", "--cifar", "--out", "--compile"):
        assert f'"{flag}"' in bench, flag
    assert "scripts/bench.py --device cuda --cifar" in SCRIPT.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run the whole check")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU visible to torch here" in proc.stderr
