"""bench/frontier.py's comparison at matched L0: SAELens's upper envelope, interpolated in log L0."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from frontier import matched_l0  # noqa: E402


def row(trainer, setting, l0, r2, tok_per_s=1000.0, layer=3):
    return {"layer": layer, "trainer": trainer, "setting": setting, "l0": l0, "r2": r2, "tok_per_s": tok_per_s}


def test_interpolates_in_log_l0_between_the_bracketing_saelens_points():
    rows = [row("saelens", "a", 4.0, 0.80, 1000), row("saelens", "b", 16.0, 0.90, 3000),
            row("atomslib", "x", 8.0, 0.86, 6000)]
    (m,) = matched_l0(rows)
    assert m["r2_saelens_at_same_l0"] == pytest.approx(0.85)     # halfway in log L0
    assert m["delta_r2"] == pytest.approx(0.01)
    assert m["speedup"] == pytest.approx(3.0)
    assert m["saelens_between"] == ["a", "b"]


def test_a_dominated_saelens_point_is_not_part_of_its_frontier():
    # "q" has a higher L0 and a lower R² than "b": SAELens's frontier runs a -> b -> c without it.
    rows = [row("saelens", "a", 4.0, 0.80), row("saelens", "b", 16.0, 0.90), row("saelens", "q", 20.0, 0.85),
            row("saelens", "c", 64.0, 0.95), row("atomslib", "x", 32.0, 0.93)]
    (m,) = matched_l0(rows)
    assert m["saelens_between"] == ["b", "c"]
    assert m["r2_saelens_at_same_l0"] == pytest.approx(0.925)


def test_points_outside_saelens_range_or_on_other_layers_are_not_compared():
    rows = [row("saelens", "a", 4.0, 0.8), row("saelens", "b", 16.0, 0.9),
            row("atomslib", "sparse", 2.0, 0.7), row("atomslib", "dense", 40.0, 0.95),
            row("atomslib", "other layer", 8.0, 0.9, layer=15)]
    assert matched_l0(rows) == []
