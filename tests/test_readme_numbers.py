"""Numbers in the README come from a run's results file, never typed: the GPU-hours line of the
`paper` grid is the one bench/grid.py writes from bench/results/grid.json."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _grid_bench():
    spec = importlib.util.spec_from_file_location("bench_grid", ROOT / "bench" / "grid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_cost_line_is_the_latest_grid_result(tmp_path):
    g = _grid_bench()
    res = json.loads((ROOT / "bench" / "results" / "grid.json").read_text())
    readme = (ROOT / "README.md").read_text()
    start, end = (readme.index(m) for m in g.README_MARKERS)
    assert readme[start:end].split("\n")[1].strip() == g.readme_cost_line(res), \
        "README's paper-grid cost differs from bench/results/grid.json: rerun `python bench/grid.py`"
    # and update_readme rewrites only that line
    copy = tmp_path / "README.md"
    copy.write_text(readme)
    res2 = {**res, "paper_gpu_hours_total": 123.4}
    g.update_readme(res2, copy)
    new = copy.read_text()
    assert "**123.4 GPU-hours**" in new and new.replace(g.readme_cost_line(res2), g.readme_cost_line(res)) == readme
