"""Two families side by side (atomslib.book.families): points by relative depth, the health of the SAE
behind each, one panel per claim; from the synthetic results folder of tests/_synthetic_results.py."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from _synthetic_results import DEPTH, write_synthetic_results
from atomslib.book import families
from atomslib.book.results import evaluate_claims, load_model_results


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return evaluate_claims(load_model_results(write_synthetic_results(tmp_path_factory.mktemp("results"))))


def test_points_are_placed_by_relative_depth_with_the_saes_health(rows):
    points = families.family_points(rows, DEPTH)
    by = {(p["claim_id"], p["model"], p["layer"]): p for p in points}
    assert by[("atoms.r2", "smollm2-135m", 15)]["depth"] == pytest.approx(15 / 30)
    assert by[("atoms.r2", "gemma3-270m", 9)]["depth"] == pytest.approx(9 / 18)
    assert by[("atoms.r2", "smollm2-135m", 3)]["value"] == pytest.approx(0.99512)   # the headline variant
    assert by[("atoms.q_star", "gemma3-270m", 9)]["healthy"] is False
    assert by[("atoms.q_star", "gemma3-270m", 2)]["healthy"] is True
    assert by[("neurons.r2", "gemma3-270m", 2)]["healthy"] is True                # no SAE, no record
    assert not any(p["claim_id"].startswith("theorem.") for p in points)          # no model, no depth
    assert families.family_points(rows, {"smollm2-135m": 30, "gemma3-270m": None}) == \
        [p for p in points if p["model"] == "smollm2-135m"]                      # unknown depth: left out


def test_the_figure_has_a_panel_per_claim_and_hollow_markers_for_unhealthy_saes(rows):
    points = families.family_points(rows, DEPTH)
    fig = families.families_figure(points)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == len({p["claim_id"] for p in points}) == 8
    q = axes[titles.index("Atoms are stable (q* ≈ 1)")]
    hollow = [c for c in q.collections if len(c.get_offsets()) and c.get_facecolors().size == 0]
    assert len(hollow) == 1 and tuple(hollow[0].get_offsets()[0]) == pytest.approx((9 / 18, 0.99))
    r2 = axes[titles.index("Atoms are faithful (R² ≈ 1)")]
    assert not [c for c in r2.collections if len(c.get_offsets()) and c.get_facecolors().size == 0]
    assert families.families_figure([]) is None
    plt.close("all")


def test_a_model_whose_config_cannot_be_read_has_no_depth():
    assert families.model_depths(["no-such-model-anywhere"]) == {"no-such-model-anywhere": None}
    assert families.depth_words({"a": 30, "b": None}) == "a 30 blocks, b (depth unknown, left out)"
