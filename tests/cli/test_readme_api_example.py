"""The README's Python example runs as printed, offline, in a fresh folder."""

import re
import subprocess
import sys

from conftest import REPO


def test_the_readme_python_example_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    score, ood, fpr = lines[0].split()
    assert (score, ood) == ("knn", "average") and 0 <= float(fpr) <= 100
    folder, accuracy = lines[1].split()
    assert (tmp_path / folder / "checkpoint.pt").is_file() or (tmp_path / folder).is_dir()
    assert 0 <= float(accuracy) <= 1
    name, value = lines[2].split()
    assert name == "energy_fpr95" and 0 <= float(value) <= 100
