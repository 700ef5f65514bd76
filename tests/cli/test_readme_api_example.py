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
    out = proc.stdout   # the printed values, between the commands' log lines
    knn = re.search(r"^knn average (\S+)$", out, flags=re.M)
    assert knn and 0 <= float(knn.group(1)) <= 100
    trained = re.search(r"^(/\S+) (0\.\d+|1\.0)$", out, flags=re.M)
    assert trained and (tmp_path / trained.group(1) / "checkpoint.pt").is_file()
    evaluated = re.search(r"^energy_fpr95 (\S+)$", out, flags=re.M)
    assert evaluated and 0 <= float(evaluated.group(1)) <= 100
