"""Where a benchmark's smoke run (--quick) writes when no --out is given: bench/results/quick/, beside the kept
results and never over them, so that bench/README.md's quick commands cannot replace a kept file with a smoke
run's numbers (chapter 7 reads bench/results/*.json only)."""
from __future__ import annotations

from pathlib import Path


def out_path(out, default, quick: bool) -> Path:
    """`out`, or with `quick` and `out` left at `default`, default's name in a quick/ folder beside it (made)."""
    if quick and Path(out) == Path(default):
        path = Path(default).parent / "quick" / Path(default).name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    return Path(out)
