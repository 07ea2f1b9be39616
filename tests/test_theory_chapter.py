"""The theory chapter (notebooks/01_theory.md) as a reader gets it: each theorem's check must bite.

The chapter is executed with papermill on the `quick` and on the `default` profile (about 6 s and
20 s on a 2-core CPU), once each per session, into a temporary folder. For every theorem the
results must hold a case **inside** its hypothesis with K ≥ 2 where the conclusion holds, and a case
**outside** it where the conclusion fails. The sentences on the page must be the ones
`book.theory_prose` writes from the saved results, and they must change when a parameter does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import pytest

from atomslib.book import results, run
from atomslib import theory_checks as tc
from atomslib.book import theory_prose as tp

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
PROFILES = ("quick", "default")


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    """chapter(profile, **params) -> (results JSON, executed notebook JSON); each run once per module."""
    cache: dict = {}

    def get(profile: str, **params):
        key = (profile, tuple(sorted(params.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"theory-{profile}")
            res = run.run_notebook("01_theory", params, profile=profile, out_dir=out, root=REPO, force=True,
                                   progress=False)
            cache[key] = (json.loads(Path(res.results_path).read_text()), json.loads(Path(res.notebook_path).read_text()))
        return cache[key]
    return get


def _markdown_outputs(nb: dict) -> list[str]:
    return ["".join(o["data"]["text/markdown"]) for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]


# ---- each theorem: inside with K ≥ 2 the conclusion holds, outside there is a failure ------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_rip_check_bites(chapter, profile):
    rows = chapter(profile)[0]["metrics"]["rip"]
    assert all(r["bound holds"] for r in rows), "a computed δ_K exceeds (K−1)μ"
    inside = [r for r in rows if r["inside"] and r["K"] >= 2]
    assert inside and all(r["RIP holds"] and r["δ_K"] < 1 for r in inside)
    assert {r["family"] for r in inside} >= {"packed", "equiangular", "simplex"}
    lost = [r for r in rows if not r["inside"] and r["δ_K"] >= 1 - 1e-9]
    assert lost and {r["family"] for r in lost} >= {"equiangular", "simplex"}
    simplex = max((r for r in rows if r["family"] == "simplex"), key=lambda r: r["K"])
    assert simplex["δ_K"] == pytest.approx(1.0) and simplex["bound (K−1)μ"] == pytest.approx(1.0)   # attained, lost
    # every displayed row belongs to one dictionary: its δ_K and bound are that dictionary's own
    for shown in tc.rip_table_rows(rows):
        twin = next(r for r in rows if r["dictionary"] == shown["dictionary"] and r["K"] == shown["K"])
        assert (twin["δ_K"], twin["bound (K−1)μ"], twin["μ"]) == (shown["δ_K"], shown["bound (K−1)μ"], shown["μ"])


@pytest.mark.parametrize("profile", PROFILES)
def test_uniqueness_check_bites(chapter, profile):
    m = chapter(profile)[0]["metrics"]
    rows = m["uniqueness"]
    k2 = [r for r in rows if r["K certified"] >= 2]
    assert len(k2) >= 2 and all(r["unique at K certified"] for r in k2)       # inside, K ≥ 2: no two codes
    assert all(r["μ"] < 1 / (2 * r["K certified"] - 1) for r in k2)
    assert all(r["spark"] >= r["1 + 1/μ"] - 1e-9 for r in rows)
    outside = [r for r in rows if r["witness"] and not r["inside at K non-unique"]]
    assert outside and all(r["witness ‖m_a − m_b‖/‖m_a‖"] < 1e-10 for r in outside)
    assert not any(r["witness"] and r["inside at K non-unique"] for r in rows)
    w = m["uniqueness_witness"]
    nnz = [sum(v != 0 for v in w["code_a"]), sum(v != 0 for v in w["code_b"])]
    assert w["K"] >= w["bound"] - 1e-9 and max(nnz) <= w["K"] and w["code_a"] != w["code_b"] and w["residual"] < 1e-10


@pytest.mark.parametrize("profile", PROFILES)
def test_recovery_check_bites(chapter, profile):
    m = chapter(profile)[0]["metrics"]
    rec = m["recovery"]
    K = rec["K"]
    for name in ("basis_pursuit", "omp"):
        cells = [(K[i], rec[name][i][j], rec["inside_bound"][i][j]) for i in range(len(K)) for j in range(len(rec["mu"]))]
        inside = [rate for k, rate, ins in cells if ins and k >= 2]
        assert inside and min(inside) == 1.0, f"{name}: a miss inside the bound"
        assert min(rate for k, rate, ins in cells if ins) == 1.0
        assert any(rate < 1 for k, rate, ins in cells if not ins), f"{name}: the sweep never leaves the safe region"
    w = m["recovery_worst_case"]
    assert not w["inside"] and not w["bp_recovers"] and not w["omp_recovers"] and w["l1_b"] < w["l1_a"]


@pytest.mark.parametrize("profile", PROFILES)
def test_threshold_check_bites(chapter, profile):
    rows = chapter(profile)[0]["metrics"]["tsae"]
    inside = [r for r in rows if r["inside"] and r["K"] >= 2]
    assert inside and all(r["min rate over interval"] == 1.0 and r["worst codes recovered"] for r in inside)
    assert all(r["signed, two-sided gate"] == 1.0 and r["signed, one-sided gate"] < 1 for r in inside)   # signs matter
    assert all(r["worst off_max"] <= r["theorem low"] + 1e-12 and r["theorem high"] <= r["worst on_min"] + 1e-12
               for r in rows if r["inside"])
    failed = [r for r in rows if not r["inside"] and not r["some τ works"]]
    assert failed and all(r["best rate over τ, worst codes"] < 1 for r in failed)


@pytest.mark.parametrize("profile", PROFILES)
def test_claims_and_aip_assumption(chapter, profile):
    res = chapter(profile)[0]
    assert results.validate_results(res, "01_theory") == []
    by_id = {}
    for c in res["claims"]:
        by_id.setdefault(c["claim_id"], []).append(c["value"])
    assert set(by_id) == {"theorem.rip", "theorem.uniqueness", "theorem.l1_recovery", "theorem.omp_recovery",
                          "theorem.tsae_support"}
    assert all(results.CLAIMS_BY_ID[k].verdict(v) == "supported" for k, vs in by_id.items() for v in vs)
    rows = {r["codes"]: r for r in res["metrics"]["aip_assumption"]}
    assert rows["isotropic"]["E[xxᵀ] ∝ I"] and rows["isotropic"]["κ population"] == pytest.approx(1.0)
    assert all(r["κ population"] > 1.5 for name, r in rows.items() if name != "isotropic")


# ---- the prose is written from the results -------------------------------------------------------
def _sentences(metrics: dict) -> list[str]:
    return [tp.aip_assumption_prose(metrics["aip_assumption"]), tp.rip_prose(metrics["rip"]),
            tp.uniqueness_prose(metrics["uniqueness"]),
            tp.recovery_prose(metrics["recovery"], metrics["recovery_worst_case"]),
            tp.threshold_prose(metrics["tsae"]), tp.summary_markdown(metrics)]


@pytest.mark.parametrize("profile", PROFILES)
def test_page_sentences_are_written_from_the_results(chapter, profile):
    res, nb = chapter(profile)
    shown = _markdown_outputs(nb)
    for text in _sentences(res["metrics"]):
        assert text in shown, f"not on the page as written from the results file:\n{text[:300]}"
    for c in nb["cells"]:                    # the code that writes a sentence is not shown, compute cells are folded
        if c["cell_type"] == "code" and any("text/markdown" in o.get("data", {}) for o in c.get("outputs", [])):
            assert "remove-input" in c["metadata"].get("tags", [])
    exercises = res["metrics"]["exercises"]
    assert set(exercises) == {"eq_eps", "simplex_atoms", "H", "x_range"}
    for name, e in exercises.items():
        assert any(f"-p {e['run']}" in t and e["expected"] in t for t in shown), name


def test_recovery_sentence_changes_with_the_sweep(chapter):
    """With K_max = 2 the sweep stays where random codes are always recovered; the sentence must say
    so instead of describing failures it did not see (issue 14: the old text claimed degradation)."""
    full, _ = chapter("quick")
    short, nb = chapter("quick", K_max=2)
    assert short["metrics"]["recovery"]["K"] == [1, 2] and short["params"]["K_max"] == 2
    before = tp.recovery_prose(full["metrics"]["recovery"], full["metrics"]["recovery_worst_case"])
    after = tp.recovery_prose(short["metrics"]["recovery"], short["metrics"]["recovery_worst_case"])
    assert after != before and after in _markdown_outputs(nb)
    assert "first misses a code" in before and "does not reach the sparsity where random codes start to fail" in after
    assert "first misses" not in after


def test_exercise_outcomes_are_what_a_run_with_that_parameter_gives(chapter):
    """The expected outcome printed with an exercise is the check itself, run with the exercise's value."""
    res, _ = chapter("quick")
    p = res["params"]
    e = tp.uniqueness_exercise(8, p["seed"])
    row = next(r for r in tc.uniqueness_check(8, p["seed"]) if r["dictionary"].startswith("simplex"))
    assert (e["K certified"], e["K non-unique"]) == (row["K certified"], row["K non-unique"]) == (3, 4)
    e = tp.rip_exercise(p["H"], 0.45, p["seed"])
    rows = [r for r in tc.rip_check(tc.packed_dictionaries(p["H"], p["seed"]), p["H"], eq_eps=0.45,
                                    simplex_atoms=p["simplex_atoms"], seed=p["seed"]) if r["dictionary"] == e["dictionary"]]
    assert e["first_K_lost"] == min(r["K"] for r in rows if not r["RIP holds"]) == 4


def test_static_text_types_no_results():
    """Numbers on the page come from the results: the chapter's own Markdown holds no decimal numbers."""
    nb = jupytext.read(REPO / "notebooks" / "01_theory.md")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert not re.findall(r"(?<![\w.])\d+\.\d+", cell.source), cell.source[:200]
