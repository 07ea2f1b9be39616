"""The theory chapter's sentences (notebooks/01_theory.md), written from its saved results.

`atomslib.theory_checks` runs the chapter's checks and returns the records that the chapter saves;
here the `*_prose` functions turn those records into the chapter's sentences, `summary_markdown`
into its closing table, and the `*_exercise` functions compute the expected outcome of each
exercise by running the same check with the exercise's parameter: nothing on the page is typed by
hand. Numbers are written by `fmt`, the book's one number format. Notation (the book's): codes x
with m = Σ_a x_a d_a, coefficients x_min ≤ |x_a| ≤ x_max, coherence μ, sparsity K,
restricted-isometry constant δ_K.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import theory as th
from .. import theory_checks as tc
from .results import fmt


# ----------------------------------------------------------------------------------------------
# The AIP and its assumption E[x xᵀ] ∝ I


def aip_assumption_prose(rows: Sequence[Mapping]) -> str:
    iso = [r for r in rows if r["E[xxᵀ] ∝ I"]]
    non = [r for r in rows if not r["E[xxᵀ] ∝ I"]]
    lo, hi = rows[0]["x range"]
    out = [f"All {len(rows)} distributions have K = {rows[0]['K']} nonzeros per code with |x_a| in [{fmt(lo)}, {fmt(hi)}] "
           f"before any scaling."]
    if iso:
        r = iso[0]
        exact = "exactly a multiple of $\\tilde S$" if r["κ population"] < 1 + 1e-9 else f"off by κ = {fmt(r['κ population'])}"
        out.append(f"With {r['codes']} codes ({r['distribution']}) the population estimate is {exact}, and the estimate from "
                   f"{r['n_samples']:,} activations has κ = {fmt(r['κ estimated'])} (sampling noise only); the atoms' "
                   f"coherence under it is {fmt(r['μ estimated'])} against {fmt(r['μ under S̃'])} under $\\tilde S$.")
    if non:
        worst = max(non, key=lambda r: r["κ population"])
        parts = ", ".join(f"{fmt(r['κ population'])} ({r['codes']})" for r in non)
        out.append(f"When $\\mathbb E[xx^\\top]\\not\\propto I$ the estimate is not a multiple of $\\tilde S$ even with "
                   f"infinitely many activations: κ of the population estimate is {parts}. The worst, {worst['codes']}, "
                   f"puts the atoms' coherence at {fmt(worst['μ population'])} instead of {fmt(worst['μ under S̃'])}.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Theorem 1: δ_K ≤ (K − 1) μ, so the RIP of order K holds when (K − 1) μ < 1


def rip_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"] and r["K"] >= 2]
    held_in = [r for r in inside if r["RIP holds"] and r["bound holds"]]
    violations = [r for r in rows if not r["bound holds"]]
    sampled = [r for r in rows if not r["exact"]]
    out = [f"Over {len(rows)} (dictionary, K) cases the computed δ_K exceeds (K−1)μ in {len(violations)}"
           + (f" ({len(sampled)} of them sampled, over {max(r['supports examined'] for r in sampled)} supports each)."
              if sampled else "."),
           f"Inside the hypothesis, (K−1)μ < 1, there are {len(inside)} cases with K ≥ 2 (up to K = "
           f"{max((r['K'] for r in inside), default=0)}); the RIP holds in {len(held_in)} of them."]
    tight = [r for r in rows if r["exact"] and r["K"] >= 3 and abs(r["δ_K"] - r["bound (K−1)μ"]) <= 1e-6]
    if tight:
        fams = sorted({r["family"] for r in tight})
        out.append(f"The bound is attained, δ_K = (K−1)μ to six digits, in {len(tight)} exactly computed cases with "
                   f"K ≥ 3 ({' and '.join(fams)} atoms; at K = 2 it always is, δ_2 = μ).")
    packed = [r for r in rows if r["family"] == "packed" and r["K"] >= 3]
    if packed:
        ratio = max(r["δ_K"] / r["bound (K−1)μ"] for r in packed)
        out.append(f"For the packed dictionaries (K ≥ 3) the sampled δ_K reaches at most {fmt(ratio)} of the bound.")
    failed = [r for r in rows if not r["inside"] and not r["RIP holds"]]
    if failed:
        first = {}
        for r in sorted(failed, key=lambda r: r["K"]):
            first.setdefault(r["family"], r)
        examples = "; ".join(f"{r['dictionary']} at K = {r['K']} ((K−1)μ = {fmt(r['bound (K−1)μ'])}, "
                             f"δ_K {'=' if r['exact'] else '≥'} {fmt(r['δ_K'])})" for r in first.values())
        out.append(f"Outside it the RIP is lost (δ_K ≥ 1) in {len(failed)} cases; the first of each family: {examples}.")
    else:
        out.append("Outside it no case in this run loses the RIP.")
    spared = [r for r in rows if not r["inside"] and r["RIP holds"]]
    if spared:
        r = spared[0]
        out.append(f"In {len(spared)} other cases outside the hypothesis no sampled subset breaks the RIP (for example "
                   f"{r['dictionary']}, K = {r['K']}: (K−1)μ = {fmt(r['bound (K−1)μ'])}, δ_K {'=' if r['exact'] else '≥'} "
                   f"{fmt(r['δ_K'])}): a failed hypothesis removes the guarantee, not necessarily the property.")
    return " ".join(out)


def rip_exercise(H: int, eq_eps: float, seed: int = 0) -> dict:
    rows = tc.rip_equiangular_rows(H, eq_eps, seed)
    top = [r for r in rows if r["dictionary"] == rows[-1]["dictionary"]]
    lost = next((r for r in top if not r["RIP holds"]), None)
    return {"eq_eps": eq_eps, "dictionary": top[0]["dictionary"], "μ": top[0]["μ"],
            "first_K_lost": lost["K"] if lost else None, "δ_K": lost["δ_K"] if lost else None,
            "K_checked": [r["K"] for r in top]}


# ----------------------------------------------------------------------------------------------
# Theorem 2: μ < 1/(2K − 1) ⇒ every K-sparse code is unique


def _named(r: Mapping) -> str:
    return f"{r['dictionary']}, μ = {fmt(r['μ'])}"


def uniqueness_prose(rows: Sequence[Mapping]) -> str:
    k2 = [r for r in rows if r["K certified"] >= 2]
    ok = [r for r in k2 if r["unique at K certified"]]
    out = [f"{len(k2)} of the {len(rows)} dictionaries have μ < 1/3, so that the bound covers K = 2"
           + (f" ({', '.join(_named(r) for r in k2)})" if k2 else "")
           + f"; for {len(ok)} of them a brute-force search finds no two codes of that sparsity with one activation.",
           f"spark ≥ 1 + 1/μ holds for {sum(r['spark ≥ 1 + 1/μ'] for r in rows)} of {len(rows)} dictionaries "
           f"(sparks {', '.join(map(str, sorted({r['spark'] for r in rows})))})."]
    wit = [r for r in rows if r["witness"]]
    bad = [r for r in wit if r["inside at K non-unique"]]
    out.append(f"Two different codes with one activation appear, at K = ⌈spark/2⌉, in {len(wit)} dictionaries, "
               f"{'always outside the bound' if not bad else f'{len(bad)} times inside the bound, contradicting the theorem'}.")
    tight = [r for r in wit if abs(r["spark"] - r["1 + 1/μ"]) < 1e-6]
    if tight:
        r = tight[0]
        out.append(f"For the {r['dictionary']} the bound is exact: spark = {r['spark']} = 1 + 1/μ, the bound certifies "
                   f"K ≤ {r['K certified']}, and K = {r['K non-unique']} already has two codes "
                   f"(with {r['witness nnz'][0]} and {r['witness nnz'][1]} nonzeros).")
    loose = [r for r in wit if r["K non-unique"] > r["K certified"] + 1]
    if loose:
        r = max(loose, key=lambda r: r["K non-unique"] - r["K certified"])
        out.append(f"For generic atoms the bound is conservative: the {r['dictionary']} dictionary (μ = {fmt(r['μ'])}) "
                   f"is certified up to K = {r['K certified']} but its codes stay unique up to K = {r['K non-unique'] - 1}.")
    return " ".join(out)


def uniqueness_exercise(simplex_atoms: int, seed: int = 0) -> dict:
    r = tc.uniqueness_row(f"simplex n={simplex_atoms}", th.regular_simplex(simplex_atoms, seed=seed))
    return {"simplex_atoms": simplex_atoms, "μ": r["μ"], "1/(2K−1)": 1 / (2 * r["K non-unique"] - 1),
            "K certified": r["K certified"], "K non-unique": r["K non-unique"], "witness nnz": r["witness nnz"],
            "residual": r["witness ‖m_a − m_b‖/‖m_a‖"]}


# ----------------------------------------------------------------------------------------------
# Theorem 3: exact recovery by basis pursuit and OMP


def recovery_prose(rec: Mapping, worst: Mapping | None = None) -> str:
    s = tc.recovery_summary(rec)
    K, mus, n = rec["K"], rec["mu"], rec["n_trials"]
    bp, om = s["basis_pursuit"], s["omp"]
    out = [f"Inside the bound ({s['cells_inside']} cells, {s['cells_inside_K2']} of them with K ≥ 2, up to "
           f"K = {s['K_inside_max']}) the lowest exact-recovery rate is {fmt(bp['min_inside'])} for basis pursuit and "
           f"{fmt(om['min_inside'])} for OMP, over {n} random signed codes per cell with |x_a| in "
           f"[{fmt(rec['x_range'][0])}, {fmt(rec['x_range'][1])}]."]
    if bp["outside_failed_cells"] == 0 and om["outside_failed_cells"] == 0:
        out.append(f"Outside it, up to K = {max(K)}, both still recover every code in all {bp['outside_cells']} cells: "
                   f"this sweep does not reach the sparsity where random codes start to fail.")
    else:
        def first(name, d):
            fails = [(k, mu) for k, mu in zip(d["first_failure"], mus) if k is not None]
            if not fails:
                return f"{name} recovers every code in every cell of the sweep"
            ratios = [k / th.uniqueness_bound(mu) for k, mu in fails]
            k, mu = min(fails)
            per = "the dictionary" if len(fails) == 1 else f"each of the {len(fails)} dictionaries with a miss"
            return (f"{name} first misses a code at K = {k} (μ = {fmt(mu)}); {d['outside_failed_cells']} of the "
                    f"{d['outside_cells']} cells outside have a miss (mean rate there {fmt(d['mean_outside'])}), and for "
                    f"{per} the first miss comes at {fmt(min(ratios))} to {fmt(max(ratios))} times its bound (1 + 1/μ)/2")
        out.append(f"Outside it, {first('basis pursuit', bp)}; {first('OMP', om)}.")
        cols = len(mus)
        order = (f"Basis pursuit first fails at a larger K than OMP for {s['bp_later']} of the {cols} dictionaries, "
                 f"at the same K for {s['same']} and at a smaller K for {s['omp_later']}")
        if s["bp_later"] == cols:
            order += ": it degrades later than OMP for every coherence"
        elif s["omp_later"] > s["bp_later"]:
            order += ": here OMP is the more robust of the two"
        out.append(order + " (a dictionary with no miss in the sweep counts as failing beyond it).")
    if worst is not None:
        which = [name for name, ok in (("basis pursuit", worst["bp_recovers"]), ("OMP", worst["omp_recovers"])) if not ok]
        out.append(f"{'The worst case fails right at the bound' if which else 'The worst case'}: for the simplex of "
                   f"{worst['n']} atoms (μ = {fmt(worst['μ'])}, the bound covers K < {fmt(worst['bound'])}) and "
                   f"K = {worst['K']}, the smallest K outside it, "
                   + (f"{' and '.join(which)} return{'s' if len(which) == 1 else ''} a code other than the true one"
                      if which else "both algorithms still return the true code")
                   + (" (its two codes have the same ℓ1 norm, so basis pursuit cannot prefer the true one)."
                      if abs(worst["l1_a"] - worst["l1_b"]) < 1e-9 else "."))
    return " ".join(out)


def recovery_exercise(H: int, K_max: int, n_trials: int, seed: int = 0) -> dict:
    packed = tc.packed_dictionaries(H, seed)
    rec = tc.recovery_sweep(packed, tc.sparsity_grid(K_max, H), n_trials, seed)
    s = tc.recovery_summary(rec)
    first = lambda d: min((k for k in d["first_failure"] if k is not None), default=None)  # noqa: E731
    return {"H": H, "mu": rec["mu"], "K_inside_max": s["K_inside_max"], "bp_first": first(s["basis_pursuit"]),
            "omp_first": first(s["omp"]), "min_inside_bp": s["basis_pursuit"]["min_inside"],
            "min_inside_omp": s["omp"]["min_inside"]}


# ----------------------------------------------------------------------------------------------
# Theorem 4: the threshold encoder recovers the support


def threshold_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"]]
    k2 = [r for r in inside if r["K"] >= 2]
    r0 = rows[0]
    out = [f"With μ = {fmt(r0['μ'])} and coefficients in [{fmt(r0['x_min'])}, {fmt(r0['x_max'])}] the theorem's interval "
           + (f"is non-empty up to K = {max(r['K'] for r in inside)}." if inside else "is empty for every K.")]
    if inside:
        rates = [r["min rate over interval"] for r in inside]
        worst_ok = sum(bool(r["worst codes recovered"]) for r in inside)
        out.append(f"Inside it ({len(k2)} value{'s' if len(k2) != 1 else ''} of K ≥ 2) every threshold across the "
                   f"interval recovers the support of "
                   f"{'every random code' if min(rates) == 1 else f'at least {fmt(min(rates))} of the random codes'}, "
                   f"and the two worst-case codes are recovered at its midpoint for {worst_ok} of {len(inside)} values of K.")
        lo_gap = max(r["theorem low"] - r["worst off_max"] for r in inside)
        hi_gap = max(r["worst on_min"] - r["theorem high"] for r in inside)
        out.append(f"Against the exact worst case over all codes, the theorem's lower end is at most {fmt(lo_gap)} too high "
                   f"and its upper end at most {fmt(hi_gap)} too low: for these packed atoms both ends are nearly tight."
                   if max(lo_gap, hi_gap) < 0.05 * (r0["x_max"]) else
                   f"Against the exact worst case over all codes, the theorem's lower end is at most {fmt(lo_gap)} too high "
                   f"and its upper end at most {fmt(hi_gap)} too low.")
        r = max(inside, key=lambda r: r["K"])
        width = (r["random on_min"] - r["random off_max"]) / (r["theorem high"] - r["theorem low"])
        out.append(f"Random codes are far from the worst case: at K = {r['K']} every τ in "
                   f"({fmt(r['random off_max'])}, {fmt(r['random on_min'])}] recovers all of them, {fmt(width)} times the "
                   f"width of the theorem's interval.")
        one, two = [r["signed, one-sided gate"] for r in inside], [r["signed, two-sided gate"] for r in inside]
        out.append(f"Signed codes through the TSAE's one-sided gate keep their support in at most {fmt(max(one))} of cases "
                   f"(negative coefficients are gated off); through the two-sided gate |p| ≥ τ, in at least {fmt(min(two))}.")
    out_rows = [r for r in rows if not r["inside"]]
    if out_rows:
        fail = next((r for r in out_rows if not r["some τ works"]), None)
        out.append(f"From K = {out_rows[0]['K']} the theorem offers no threshold"
                   + (f"; from K = {fail['K']} none exists: the two worst-case codes need τ ≤ {fmt(fail['worst on_min'])} "
                      f"and τ > {fmt(fail['worst off_max'])}, and the best threshold recovers the support of "
                      f"{fmt(fail['best rate over τ, worst codes'])} of them." if fail else
                      ", though in this run some threshold still works for every code up to the largest K checked."))
    return " ".join(out)


def threshold_exercise(D: torch.Tensor, x_range: Sequence[float], seed: int = 0) -> dict:
    rows = tc.threshold_check(D, x_range, 8, seed)
    inside = [r["K"] for r in rows if r["inside"]]
    fail = next((r["K"] for r in rows if not r["some τ works"]), None)
    return {"x_range": list(map(float, x_range)), "K_inside_max": max(inside) if inside else 0, "K_no_threshold": fail}


# ----------------------------------------------------------------------------------------------
# The closing summary


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """A slide-sized Markdown table: each theorem, its classical source, hypothesis, and what this run's
    check showed inside (K ≥ 2) and outside the hypothesis."""
    rip = metrics["rip"]
    r_in = [r for r in rip if r["inside"] and r["K"] >= 2]
    r_out = [r for r in rip if not r["inside"] and not r["RIP holds"]]
    u = metrics["uniqueness"]
    u_in = [r for r in u if r["K certified"] >= 2]
    u_out = [r for r in u if r["witness"] and not r["inside at K non-unique"]]
    s = tc.recovery_summary(metrics["recovery"])
    w = metrics["recovery_worst_case"]
    t = metrics["tsae"]
    t_in = [r for r in t if r["inside"] and r["K"] >= 2]
    t_fail = [r for r in t if not r["some τ works"]]
    rows = [
        ("RIP", "Gershgorin; Tropp 2004", "(K−1)μ < 1 ⇒ δ_K ≤ (K−1)μ < 1",
         f"{sum(r['RIP holds'] for r in r_in)}/{len(r_in)} cases hold (K ≤ {max((r['K'] for r in r_in), default=0)})",
         f"δ_K ≥ 1 in {len(r_out)} cases"),
        ("Uniqueness", "Donoho–Elad 2003", "μ < 1/(2K−1) ⇒ the K-sparse code is unique",
         f"{sum(r['unique at K certified'] for r in u_in)}/{len(u_in)} dictionaries unique at K ≥ 2",
         f"two codes, one m, in {len(u_out)} dictionaries"),
        ("Recovery (BP, OMP)", "Donoho–Elad 2003; Tropp 2004", "same bound ⇒ BP and OMP return the code",
         f"min rate BP {fmt(s['basis_pursuit']['min_inside_K2'])}, OMP {fmt(s['omp']['min_inside_K2'])} "
         f"({s['cells_inside_K2']} cells)",
         f"misses in {s['basis_pursuit']['outside_failed_cells']} (BP), {s['omp']['outside_failed_cells']} (OMP) of "
         f"{s['basis_pursuit']['outside_cells']} cells; simplex K = {w['K']}: BP "
         f"{'ok' if w['bp_recovers'] else 'fails'}, OMP {'ok' if w['omp_recovers'] else 'fails'}"),
        ("Threshold encoder", "thresholding (Elad 2010)", "x ≥ 0, μKx_max < τ < x_min − μ(K−1)x_max",
         f"min rate {fmt(min((r['min rate over interval'] for r in t_in), default=None))} at K ≤ "
         f"{max((r['K'] for r in t_in), default=0)}; worst-case codes kept at "
         f"{sum(bool(r['worst codes recovered']) for r in t_in)} of {len(t_in)} such K",
         (f"no τ works from K = {t_fail[0]['K']}" if t_fail else "a τ still works at every K checked")),
    ]
    head = "| theorem | classical source | hypothesis ⇒ conclusion | inside, K ≥ 2 (this run) | outside (this run) |"
    lines = [head, "|---|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)
