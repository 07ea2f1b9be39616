"""The README's library example runs as written (pasted into a script) and prints labelled results."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it as a library"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README's library section has no python block"
    return m.group(1)


@pytest.mark.book
def test_readme_library_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"layer 3, held-out tokens: R² \(euclid\) (-?[\d.]+), mean L0 ([\d.]+), q\* \(A\) ([\d.]+)", line)
    assert m, f"unlabelled or unexpected output: {line!r}"
    r2, l0, q = map(float, m.groups())
    assert 0.5 < r2 <= 1 and 1 <= l0 < 576 and 0 <= q <= 1
    assert "UserWarning" not in r.stderr, r.stderr[-2000:]
