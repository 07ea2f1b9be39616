"""bench/health.py's comparison with SAELens at matched L0: the atoms' frontier is the upper envelope of every
atoms row of the shared input map, interpolated in log L0 at SAELens's L0, never extrapolated."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from health import matched_l0  # noqa: E402


def _row(kind, l0, r2):
    return {"kind": kind, "mean_l0": l0, "r2_without_massive": r2}


def test_the_atoms_frontier_is_the_envelope_of_every_atoms_row_of_the_shared_map():
    rows = [_row("atoms (L0 penalty) at 4/H", 20.0, 0.60), _row("atoms (L0 penalty)", 50.0, 0.70),
            _row("atoms (target L0 32)", 30.0, 0.68),           # above the line between the penalty points
            _row("atoms (L0 penalty) at 2/H", 40.0, 0.66),      # below the target form: off the envelope
            _row("atoms (whitened)", 40.0, 0.99),               # another space: never on it
            _row("atoms (L0 penalty), version-6 input map", 40.0, 0.99),
            _row("SAELens JumpReLU", 40.0, 0.67)]
    m = matched_l0("m", 3, rows)
    w = math.log(40 / 30) / math.log(50 / 30)
    assert m["atoms_r2_without_massive_at_that_l0"] == pytest.approx(0.68 + w * (0.70 - 0.68))
    assert m["atoms_minus_saelens"] == pytest.approx(m["atoms_r2_without_massive_at_that_l0"] - 0.67)
    assert (m["model"], m["layer"], m["saelens_l0"]) == ("m", 3, 40.0)


def test_no_comparison_outside_the_atoms_l0_range():
    rows = [_row("atoms (L0 penalty)", 50.0, 0.70), _row("atoms (L0 penalty) at 4/H", 20.0, 0.60),
            _row("SAELens JumpReLU", 60.0, 0.75)]
    m = matched_l0("m", 3, rows)
    assert m["atoms_r2_without_massive_at_that_l0"] is None and m["atoms_minus_saelens"] is None


def test_a_smoke_run_never_writes_over_a_kept_result(tmp_path):
    """bench/*.py --quick without --out writes into results/quick/, beside the kept file, never over it; an
    explicit --out (or a full run) is used as given."""
    from smoke_out import out_path

    kept = tmp_path / "results" / "health.json"
    assert out_path(str(kept), str(kept), quick=True) == tmp_path / "results" / "quick" / "health.json"
    assert (tmp_path / "results" / "quick").is_dir()
    assert out_path(str(kept), str(kept), quick=False) == kept
    assert out_path(tmp_path / "mine.json", str(kept), quick=True) == tmp_path / "mine.json"
