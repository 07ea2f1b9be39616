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

import torch

from atomslib import recovery_checks as rk
from atomslib import theory as th
from atomslib import theory_checks as tc
from atomslib.aip import AIP
from atomslib.book import results, run
from atomslib.book import theory_exercises as tx
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
    assert simplex["RIP lost through"].startswith("λ_min")                   # the atoms sum to zero: dependent
    eq_lost = [r for r in lost if r["family"] == "equiangular"]
    assert eq_lost and all(r["RIP lost through"] == "λ_max ≥ 2 only" and r["λ_min"] > 0 for r in eq_lost)
    assert {r["N"] for r in rows if r["family"] == "equiangular"} == {chapter(profile)[0]["params"]["H"] // 2}
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
def test_the_simplex_witness_is_a_tie_and_the_text_calls_it_non_uniqueness(chapter, profile):
    res, nb = chapter(profile)
    n = res["params"]["simplex_atoms"]
    assert n % 2 == 0
    for w in (res["metrics"]["uniqueness_witness"], res["metrics"]["nonuniqueness"]):
        nnz = [sum(abs(v) > 1e-12 for v in w["code_a"]), sum(abs(v) > 1e-12 for v in w["code_b"])]
        assert nnz == w["nnz"] == [n // 2, n // 2] and w["K"] == n // 2 and not w["inside"]
    c = res["metrics"]["nonuniqueness"]
    assert c["tie"] and c["basis_pursuit reproduces m"] and c["omp reproduces m"]
    text = tp.nonuniqueness_prose(c)
    assert any(text in t for t in _markdown_outputs(nb))
    assert f"two codes with {n // 2} nonzeros each" in text and "the code is not unique" in text
    assert "failure of uniqueness, not of the algorithms" in text and "fails" not in text
    slide = tp.summary_markdown(res["metrics"])
    assert "not unique" in slide and "BP fails" not in slide and "Gribonval–Nielsen" in slide and "Candès–Tao" in slide


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
    e = m["erc_case"]                       # unique (brute force, redone here), missed by OMP, found by BP
    D = torch.cat([torch.eye(e["H"], dtype=torch.float64), torch.full((1, e["H"]), e["H"] ** -0.5, dtype=torch.float64)])
    m_ = torch.tensor(e["code"], dtype=torch.float64) @ D
    reps = [S for k in range(1, e["K"] + 1) for S in _supports(D, m_, k)]
    assert reps == [tuple(range(e["K"]))] and e["unique"]
    assert e["ERC"] >= 1 and e["bp_recovers"] and not e["omp_recovers"] and not e["inside"]
    om = torch.tensor(e["omp"], dtype=torch.float64)
    assert float((om - torch.tensor(e["code"], dtype=torch.float64)).abs().max()) > 0.1   # OMP's answer is another code


def _supports(D, m, size, tol=1e-9):
    """Supports of exactly `size` atoms from which m is exactly representable (brute force, independent of rk)."""
    import itertools

    out = []
    for S in itertools.combinations(range(D.shape[0]), size):
        A = D[list(S)].T
        x = torch.linalg.lstsq(A, m[:, None], driver="gelsd").solution
        if float((A @ x)[:, 0].sub(m).norm()) <= tol * float(m.norm()):
            out.append(S)
    return out


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
    assert rows["isotropic"]["E[xᵀx] ∝ I"] and rows["isotropic"]["κ population"] == pytest.approx(1.0)
    assert all(r["κ population"] > 1.5 for name, r in rows.items() if name != "isotropic")


# ---- the prose is written from the results -------------------------------------------------------
def _sentences(res: dict) -> list[str]:
    metrics = res["metrics"]
    return [tp.whitening_prose(metrics["aip_demo"]), tp.geometries_prose(metrics["geometries"]),
            tp.aip_assumption_prose(metrics["aip_assumption"]), tp.rip_prose(metrics["rip"]),
            tp.uniqueness_prose(metrics["uniqueness"]), tp.sweep_scope_prose(metrics["recovery"], res["params"]["K_max"]),
            tp.recovery_prose(metrics["recovery"]), tp.phase_transition_prose(metrics["recovery"]),
            tp.nonuniqueness_prose(metrics["nonuniqueness"]), tp.erc_prose(metrics["erc_case"]),
            tp.threshold_prose(metrics["tsae"]),
            tp.encoder_geometry_prose(metrics["tsae_geometry"], metrics["tsae_true_aip"]), tp.summary_markdown(metrics)]


@pytest.mark.parametrize("profile", PROFILES)
def test_page_sentences_are_written_from_the_results(chapter, profile):
    res, nb = chapter(profile)
    shown = _markdown_outputs(nb)
    for text in _sentences(res):
        assert any(text in t for t in shown), f"not on the page as written from the results file:\n{text[:300]}"
    for c in nb["cells"]:                    # the code that writes a sentence is not shown, compute cells are folded
        if c["cell_type"] == "code" and any("text/markdown" in o.get("data", {}) for o in c.get("outputs", [])):
            assert "remove-input" in c["metadata"].get("tags", [])
    exercises = res["metrics"]["exercises"]
    assert set(exercises) == {"eq_eps", "simplex_atoms", "H", "x_range"}
    for name, e in exercises.items():        # the answer is folded in a dropdown under its question
        assert any(f"-p {e['run']}" in t and e["task"] in t and f"{{dropdown}} Answer" in t and e["expected"] in t
                   and t.index(e["task"]) < t.index("{dropdown}") < t.index(e["expected"]) for t in shown), name


@pytest.mark.parametrize("profile", PROFILES)
def test_measured_coherences_are_printed_not_targets(chapter, profile):
    res, nb = chapter(profile)
    H, seed = res["params"]["H"], res["params"]["seed"]
    packed = tc.packed_dictionaries(H, seed)
    measured = [tc.coherence(D) for D in packed.values()]
    assert res["metrics"]["coherences"] == pytest.approx(measured, abs=1e-12)   # thread counts differ: round-off
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                      if o.get("name") == "stdout")
    line = next(x for x in printed.splitlines() if "measured coherences" in x)
    assert "measured coherences " + ", ".join(results.fmt(m) for m in measured) + ";" in line
    assert not any(results.fmt(target) in line for target, m in zip(packed, measured) if abs(target - m) > 1e-3)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_true_aip_check_gives_the_coherence_the_text_states(chapter, profile):
    """The check under the true S̃ = (DᵀD)⁻¹ of the over-complete packed dictionary (N = 2H) is run, and
    the coherence the sentence states is that of D's atoms under S̃, recomputed here from D alone."""
    res, nb = chapter(profile)
    H, seed = res["params"]["H"], res["params"]["seed"]
    D = next(iter(tc.packed_dictionaries(H, seed).values()))
    assert D.shape == (2 * H, H)
    W = torch.linalg.inv(torch.linalg.cholesky(D.T @ D)).T        # any W with W Wᵀ = (DᵀD)⁻¹ gives the same cosines
    U = (D @ W) / (D @ W).norm(dim=1, keepdim=True)
    mu = float((U @ U.T).abs().fill_diagonal_(0).max())
    rows = res["metrics"]["tsae_true_aip"]
    assert all(r["μ"] == pytest.approx(mu, abs=1e-9) for r in rows)
    assert res["metrics"]["geometries"]["μ true S̃"] == pytest.approx(mu, abs=1e-9)
    assert mu > tc.coherence(D) + 0.01                             # not the Euclidean coherence: the frame is not tight
    text = tp.encoder_geometry_prose(res["metrics"]["tsae_geometry"], rows)
    assert f"Under the true S̃ of this over-complete dictionary (N = 2H) the atoms have coherence {results.fmt(mu)}" in text
    assert any(text in t for t in _markdown_outputs(nb))
    assert [r["geometry"] for r in res["metrics"]["tsae_geometry"]][1:3] == ["pull-back S_A = (AᵀA)⁻¹", "true S̃ = (DᵀD)⁻¹"]
    pull, true = res["metrics"]["tsae_geometry"][1:3]
    assert pull["μ"] == pytest.approx(tc.coherence(D), abs=1e-9) and true["μ"] == pytest.approx(mu, abs=1e-9)


@pytest.mark.parametrize("profile", PROFILES)
def test_first_misses_carry_their_counts_and_intervals(chapter, profile):
    res, _ = chapter(profile)
    rec = res["metrics"]["recovery"]
    s = rk.recovery_summary(rec)
    text = tp.recovery_prose(rec)
    for name in ("basis_pursuit", "omp"):
        for d in s[name]["first_failure_detail"]:
            if d is not None:
                assert d["missed"] >= 1 and d["n"] == rec["n_trials"] and d["interval"][0] <= d["rate"] <= d["interval"][1]
        x = min((d for d in s[name]["first_failure_detail"] if d), key=lambda d: (d["K"], d["rate"]))
        assert f"first misses at K = {x['K']} (μ = {results.fmt(x['μ'])}), on {x['missed']} of {x['n']} codes" in text
    rows = tp.first_miss_rows(rec)
    assert all("95% interval" in k for k in rows[0] if "rate" in k)


# ---- each typed sentence of issue 31 is generated, and a parameter change flips it ------------------
def test_sweep_scope_sentence_flips_with_K_max(chapter):
    """"far enough past the bound to reach the sparsity where random codes stop being recovered" is
    true at K_max = 32 and false at K_max = 2; the page says which."""
    full, _ = chapter("quick")
    short, nb = chapter("quick", K_max=2)
    assert short["metrics"]["recovery"]["K"] == [1, 2] and short["params"]["K_max"] == 2
    before = tp.sweep_scope_prose(full["metrics"]["recovery"], full["params"]["K_max"])
    after = tp.sweep_scope_prose(short["metrics"]["recovery"], 2)
    assert "far enough to see random codes stop being recovered" in before
    assert "not far enough" in after and "far enough to see" not in after.replace("not far enough", "")
    assert any(after in t for t in _markdown_outputs(nb))
    rec_after = tp.recovery_prose(short["metrics"]["recovery"])
    assert "first misses" not in rec_after and "does not reach the sparsity" in rec_after


def test_whitening_sentence_flips_with_the_offset(chapter):
    """The 90° heading states what whitening guarantees; what the run shows about the Euclidean angles
    is written from the results: far from 90° with the offset, near it without one."""
    full, _ = chapter("quick")
    none, nb = chapter("quick", offset_scale=0.0)
    with_offset = tp.whitening_prose(full["metrics"]["aip_demo"])
    without = tp.whitening_prose(none["metrics"]["aip_demo"])
    assert "far from 90°" in with_offset and "already within" not in with_offset
    assert "already within" in without and "far from 90°" not in without
    assert any(without in t for t in _markdown_outputs(nb))
    src = jupytext.read(REPO / "notebooks" / "01_theory.md")
    heads = [line for c in src.cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("#")]
    assert "## Whitening puts activations at about 90°, whatever they are" in heads
    assert not any("re-centre at 90" in h for h in heads)


def test_rip_exercise_relation_is_computed_and_flips():
    """"δ_K = (K−1)μ" is a computed relation; with atoms so incoherent that no order up to N loses the RIP,
    the answer says that instead."""
    lost = tx.rip_exercise(24, 0.3, 0.45, 0)
    assert "δ_K = 1.35 = (K−1)μ = 1.35" in lost["expected"] and "through λ_max" in lost["expected"]
    spared = tx.rip_exercise(24, 0.3, 0.05, 0)                      # N = 12 atoms; (K−1)·0.05 < 1 for every K ≤ 12
    assert spared["first_K_lost"] is None and "no order checked" in spared["expected"] and "(K−1)μ" not in spared["expected"]
    assert (tp.relation(1.0, 1.0), tp.relation(0.5, 1.0), tp.relation(1.5, 1.0)) == ("=", "<", ">")
    assert "more coherent" in lost["task"] and "less coherent" in tx.rip_exercise(24, 0.45, 0.2, 0)["task"]


def test_cannot_be_relaxed_is_said_only_on_the_boundary():
    even = tx.uniqueness_exercise(6, 8, 0)
    odd = tx.uniqueness_exercise(6, 7, 0)
    assert even["on boundary"] and "cannot be relaxed" in even["expected"]
    assert not odd["on boundary"] and "cannot be relaxed" not in odd["expected"] and "past the boundary" in odd["expected"]
    assert even["task"].startswith("Lower μ") and tx.uniqueness_exercise(10, 8, 0)["task"].startswith("Raise μ")


def test_recovery_exercise_names_the_width_not_mu_and_its_direction_is_computed():
    """The old text credited the coherences for the shift of the transition; the task now names the width,
    its direction word follows the values, and the answer gives the first misses in K and K/H."""
    down = tx.recovery_exercise(12, 8, 6, 2, 0)
    up = tx.recovery_exercise(8, 12, 6, 2, 0)
    assert down["task"].startswith("Shrink the model width from H = 12 to H = 8")
    assert up["task"].startswith("Grow the model width from H = 8 to H = 12")
    for e in (down, up):
        assert "coherences rise" not in e["task"] and "K/H" in e["task"]
        if e["bp_first"] is not None:
            assert f"K = {e['bp_first']} (K/H = " in e["expected"]
    D = next(iter(tc.packed_dictionaries(8, 0).values()))
    assert tx.threshold_exercise(D, [1.0, 1.4], [1.0, 2.0])["task"].startswith("Widen")
    assert tx.threshold_exercise(D, [1.0, 2.0], [1.0, 1.2])["task"].startswith("Narrow")


def test_exercise_outcomes_are_what_a_run_with_that_parameter_gives(chapter):
    """The expected outcome printed with an exercise is the check itself, run with the exercise's value."""
    res, _ = chapter("quick")
    p = res["params"]
    e = tx.uniqueness_exercise(p["simplex_atoms"], 8, p["seed"])
    row = next(r for r in tc.uniqueness_check(8, p["seed"]) if r["dictionary"].startswith("simplex"))
    assert (e["K certified"], e["K non-unique"]) == (row["K certified"], row["K non-unique"]) == (3, 4)
    e = tx.rip_exercise(p["H"], p["eq_eps"], 0.45, p["seed"])
    rows = [r for r in tc.rip_check(tc.packed_dictionaries(p["H"], p["seed"]), p["H"], eq_eps=0.45,
                                    simplex_atoms=p["simplex_atoms"], seed=p["seed"]) if r["dictionary"] == e["dictionary"]]
    assert e["first_K_lost"] == min(r["K"] for r in rows if not r["RIP holds"]) == 4
    assert res["metrics"]["exercises"]["eq_eps"]["expected"] == e["expected"]


def test_static_text_types_no_results():
    """Numbers on the page come from the results: the chapter's own Markdown holds no decimal numbers."""
    nb = jupytext.read(REPO / "notebooks" / "01_theory.md")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert not re.findall(r"(?<![\w.])\d+\.\d+", cell.source), cell.source[:200]
