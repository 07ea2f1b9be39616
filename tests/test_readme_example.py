"""The README's library example runs as written (pasted into a script), without a warning from
atomslib, and prints labelled results: which criterion, which variant, which split, and what q* means.

It harvests and trains on the embedded model: about a minute and a half on a 2-core CPU.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
# how Python prints a warning: "path/to/file.py:123: UserWarning: message"
WARNING_LINE = re.compile(r"^(?P<path>.+?\.py):\d+: (?P<category>\w*Warning): (?P<message>.*)$", re.M)
LABELLED_LINES = {   # label -> the value's pattern and its plausible range
    "R² (euclid, held-out)": (r"-?\d+\.\d{3}", 0.5, 1.0),
    "mean L0 (held-out)": (r"\d+\.\d", 1.0, 576.0),
    "q* (variant A, AIP, held-out)": (r"\d\.\d{3}", 0.0, 1.0),
}


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it as a library"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README's library section has no python block"
    return m.group(1)


def atomslib_warnings(stderr: str, script: Path) -> list[str]:
    """Warnings raised in atomslib, or attributed by atomslib (stacklevel=2) to the script calling it."""
    ours = (str(REPO / "atomslib") + os.sep, str(script))
    return [w.group(0) for w in WARNING_LINE.finditer(stderr) if w.group("path").startswith(ours)]


def test_warning_filter_sees_atomslib_warnings(tmp_path):
    """The check below can fail: a warning from atomslib, printed the way Python prints it, is found."""
    script = tmp_path / "example.py"
    stderr = (f"{REPO / 'atomslib' / 'criteria.py'}:51: UserWarning: Converting a tensor with requires_grad=True "
              f"to a scalar may lead to unexpected behavior.\n  self.sse += ...\n"
              f"{script}:9: UserWarning: aip= is ignored because TSAEConfig.whiten=False\n"
              f"/elsewhere/site-packages/lib.py:3: FutureWarning: not ours\n")
    assert len(atomslib_warnings(stderr, script)) == 2


@pytest.mark.model
def test_readme_library_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    # -W default: every warning shown once per place, DeprecationWarnings included
    r = subprocess.run([sys.executable, "-W", "default", str(script)], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    found = atomslib_warnings(r.stderr, script)
    assert not found, "the README example raises warnings from atomslib:\n" + "\n".join(found)

    out = r.stdout
    assert re.search(r"^layer 3, TSAE with \d+ units, \d+ held-out tokens:$", out, re.M), out
    for label, (number, lo, hi) in LABELLED_LINES.items():
        m = re.search(rf"^  {re.escape(label)} +({number})\b", out, re.M)
        assert m, f"no line labelled {label!r} in the output:\n{out}"
        assert lo <= float(m.group(1)) <= hi, f"{label} = {m.group(1)} is outside [{lo}, {hi}]:\n{out}"
    explanation = [ln for ln in out.splitlines() if ln.startswith("q* is ")]
    assert len(explanation) == 1, f"no one line saying what q* means:\n{out}"
    assert "1/(2K_q − 1)" in explanation[0] and "it is 0 when" in explanation[0], explanation[0]
