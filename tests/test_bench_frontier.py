"""bench/frontier.py's comparison at matched L0: SAELens's upper envelope, interpolated in log L0."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from frontier import goals, matched_l0  # noqa: E402


def row(trainer, setting, l0, r2, tok_per_s=1000.0, layer=3, **kw):
    return {"layer": layer, "trainer": trainer, "setting": setting, "l0": l0, "r2": r2, "tok_per_s": tok_per_s, **kw}


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


def test_each_batch_is_compared_with_saelens_at_the_same_batch_and_the_goals_are_per_batch():
    """The batch axis (issue 30): an atomslib point at batch 2048 is set against SAELens's points at 2048 only,
    and each batch's goals (ΔR² >= 0, >= 2x the speed, the target form's L0 within 20%) are judged on their own."""
    rows = [row("saelens", "a", 4.0, 0.80, batch=512), row("saelens", "b", 16.0, 0.90, batch=512),
            row("saelens", "a", 4.0, 0.70, batch=2048), row("saelens", "b", 16.0, 0.80, batch=2048),
            row("atomslib", "L0 penalty 1/H", 8.0, 0.86, 6000, batch=512),
            row("atomslib", "L0 penalty 1/H", 8.0, 0.76, 1500, batch=2048),
            row("atomslib", "target L0 8", 9.0, 0.87, 6000, batch=512, l0_train=8.2),
            row("atomslib", "target L0 8", 12.0, 0.79, 6000, batch=2048, l0_train=10.0)]
    m = matched_l0(rows)
    by = {(x["batch"], x["setting"]): x for x in m}
    assert by[(512, "L0 penalty 1/H")]["delta_r2"] == pytest.approx(0.01)
    assert by[(2048, "L0 penalty 1/H")]["delta_r2"] == pytest.approx(0.01)    # not -0.09 against batch 512's
    g = {x["batch"]: x for x in goals(rows, m, target_l0=8.0)}
    assert g[512]["met"] and g[512]["target_l0_ratio"] == pytest.approx(1.125)
    assert g[2048]["min_speedup"] == pytest.approx(1.5) and g[2048]["target_l0_ratio"] == pytest.approx(1.5)
    assert g[2048]["target_l0_train_ratio"] == pytest.approx(1.25) and not g[2048]["met"]


def test_reuse_refuses_a_file_from_another_budget(tmp_path):
    """--reuse keeps an earlier run's rows only when they were trained with the same budget and width."""
    import json

    from frontier import main

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"setup": {"tokens_per_sae": 100_000, "capacity": 4.0}, "rows": []}))
    with pytest.raises(SystemExit, match="--tokens 500000"):
        main(["--reuse", str(old), "--out", str(tmp_path / "new.json")])


def test_reuse_keeps_saelens_rows_and_atomslib_rows_of_this_trainer_version_only():
    from frontier import reusable_rows

    row = {"layer": 3, "batch": 512, "setting": "x"}
    old = {"rows": [{**row, "trainer": "saelens"}, {**row, "trainer": "atomslib", "trainer_version": 9},
                    {**row, "trainer": "atomslib", "setting": "y", "trainer_version": 10},
                    {**row, "trainer": "atomslib", "setting": "z"}]}
    assert sorted(reusable_rows(old, 10)) == [(3, 512, "atomslib", "y"), (3, 512, "saelens", "x")]
