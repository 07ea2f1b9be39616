"""The theory chapter's sentences (notebooks/01_theory.md), written from its saved results.

`atomslib.theory_checks` and `atomslib.recovery_checks` run the chapter's checks and return the
records that the chapter saves; here the `*_prose` functions turn those records into the chapter's
sentences and `summary_markdown` into its closing table. Every word that states a result (a
comparison, a direction, "fails" or "holds") is chosen from the numbers, so a parameter change that
changes the result changes the sentence. The exercises are `atomslib.book.theory_exercises`.
Numbers are written by `fmt`, the book's one number format. Notation (the book's, rows layout):
codes x with m = x D = Σ_a x_a d_a, coefficients x_min ≤ |x_a| ≤ x_max, coherence μ, sparsity K,
restricted-isometry constant δ_K; geometries S̃ = (DᵀD)⁻¹ (true AIP), Ŝ = (E[mᵀm])⁻¹ (fitted),
S_A = (AᵀA)⁻¹ (pull-back through the skew A).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import recovery_checks as rk
from .. import theory as th
from .results import fmt


def relation(a: float, b: float, tol: float = 1e-9) -> str:
    """"=", "<" or ">" between a and b (equal within tol relative to the larger)."""
    if abs(a - b) <= tol * max(1.0, abs(a), abs(b)):
        return "="
    return "<" if a < b else ">"


def zero(v: float, tol: float = 1e-12) -> float:
    """v, with rounding noise around 0 written as 0."""
    return 0.0 if abs(v) < tol else v


def interval(iv: Sequence[float]) -> str:
    return f"[{fmt(iv[0])}, {fmt(iv[1])}]"


# ----------------------------------------------------------------------------------------------
# The geometry: whitening, the three AIPs, and the assumption E[xᵀx] ∝ I


def whitening_prose(d: Mapping) -> str:
    """The skew demo: angles before and after whitening by the fitted Ŝ. Near 90° means within the
    spread of angles of isotropic vectors in R^H, 57.3°/√H."""
    H = d["H"]
    spread = math.degrees(1 / math.sqrt(H))
    e_angle, f_angle = d["mean angle between activations (°)"]
    e_cos2, f_cos2 = d["mean cos²"]
    near = abs(90 - e_angle) < spread
    before = (f"already within {fmt(spread)}° (57.3°/√H, the spread of angles between isotropic vectors) of 90°: with "
              f"this offset (offset_scale = {fmt(d['offset_scale'])}) there is little for whitening to undo"
              if near else
              f"far from 90° (more than 57.3°/√H = {fmt(spread)}° away): the shared offset (offset_scale = "
              f"{fmt(d['offset_scale'])}) pulls them together")
    return (f"With nonnegative codes of K = {d['K']} nonzeros and {d['n_activations']:,} activations (half to fit Ŝ, half "
            f"held out), the held-out activations sit at {fmt(e_angle)}° on average in the Euclidean geometry (mean cos² "
            f"{fmt(e_cos2)}), {before}. Under Ŝ they sit at {fmt(f_angle)}°, with mean cos² {fmt(f_cos2)} against "
            f"1/H = {fmt(1 / H)}: that is what whitening does to any data. It says nothing yet about atoms; their "
            "coherence, below, does.")


def geometries_prose(g: Mapping) -> str:
    """Why the same atoms have different coherences under the Euclidean inner product, S_A, S̃ and Ŝ."""
    e0, pull, true, fit = (g["μ Euclidean, before the skew"], g["μ pull-back S_A"], g["μ true S̃"], g["μ fitted Ŝ"])
    out = [f"The skewed atoms have coherence {fmt(g['μ Euclidean'])} in the Euclidean geometry. Under the pull-back "
           f"S_A = (AᵀA)⁻¹ they have {fmt(pull)}, which is the Euclidean coherence of the atoms before the skew "
           f"({fmt(e0)}): S_A undoes A and nothing else, and the atoms have unit norm under it (to "
           f"{fmt(g['ν pull-back max |ν − 1|'])})."]
    tight = abs(g["eig DᵀD max"] - g["eig DᵀD min"]) <= 1e-6 * g["tight-frame eigenvalue N/H"]
    word = {"<": "lower than", ">": "higher than", "=": "equal to"}[relation(true, pull, 1e-6)]
    out.append(f"Under their true AIP S̃ = (DᵀD)⁻¹ the coherence is {fmt(true)}, {word} under S_A. S̃ does not depend on "
               f"the skew (it is {fmt(g['μ true S̃ of the unskewed atoms'])} for the atoms before it too); it differs from "
               "the Euclidean geometry of those atoms "
               + ("only by a factor, because they form a tight frame." if tight else
                  f"because they do not form a tight frame: the eigenvalues of DᵀD run from {fmt(g['eig DᵀD min'])} to "
                  f"{fmt(g['eig DᵀD max'])} instead of all being N/H = {fmt(g['tight-frame eigenvalue N/H'])}, so S̃ "
                  "stretches the directions the packing left thin.")
               + f" Under S̃ the {g['N']} atoms cannot all have unit norm: Σ_a ‖d_a‖²_S̃ = tr(S̃ DᵀD) = H, and here their "
               f"norms ν_a run from {fmt(g['ν min'])} to {fmt(g['ν max'])}, mean ν² = {fmt(g['mean ν²'])} = H/N.")
    out.append(f"Under the fitted Ŝ the coherence is {fmt(fit)}, "
               + ("close to" if abs(fit - true) <= 0.1 * true else "not") + " the value under S̃: Ŝ is S̃ only up to the "
               "second moment of the codes it was fitted on, and these (nonnegative, offset) are not isotropic.")
    return " ".join(out)


def aip_assumption_prose(rows: Sequence[Mapping]) -> str:
    iso = [r for r in rows if r["E[xᵀx] ∝ I"]]
    non = [r for r in rows if not r["E[xᵀx] ∝ I"]]
    lo, hi = rows[0]["x range"]
    out = [f"All {len(rows)} distributions have K = {rows[0]['K']} nonzeros per code with |x_a| in [{fmt(lo)}, {fmt(hi)}] "
           f"before any scaling."]
    if iso:
        r = iso[0]
        exact = "exactly a multiple of $\\tilde S$" if r["κ population"] < 1 + 1e-9 else f"off by κ = {fmt(r['κ population'])}"
        out.append(f"With {r['codes']} codes ({r['distribution']}) the population estimate is {exact}, and the estimate from "
                   f"{r['n_samples']:,} activations has κ = {fmt(r['κ estimated'])} (sampling noise only); the atoms' "
                   f"coherence under it is {fmt(r['μ estimated'])} against {fmt(r['μ under S̃'])} under $\\tilde S$.")
    off = [r for r in non if r["κ population"] > 1 + 1e-6]
    if off:
        worst = max(off, key=lambda r: r["κ population"])
        parts = ", ".join(f"{fmt(r['κ population'])} ({r['codes']})" for r in off)
        out.append(f"For the {len(off)} distribution{'s' if len(off) != 1 else ''} here whose second moment is not "
                   f"∝ I the estimate is not a multiple of $\\tilde S$ even with infinitely many activations: κ of the "
                   f"population estimate is {parts}. The worst, {worst['codes']}, puts the atoms' coherence at "
                   f"{fmt(worst['μ population'])} instead of {fmt(worst['μ under S̃'])}.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Theorem 1: δ_K ≤ (K − 1) μ, so the RIP of order K holds when (K − 1) μ < 1


def rip_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"] and r["K"] >= 2]
    held_in = [r for r in inside if r["RIP holds"] and r["bound holds"]]
    violations = [r for r in rows if not r["bound holds"]]
    sampled = [r for r in rows if not r["exact"]]
    k2 = [r for r in rows if r["K"] == 2]
    out = [f"Over {len(rows)} (dictionary, K) cases the computed δ_K exceeds (K−1)μ in {len(violations)}"
           + (f" ({len(sampled)} of them sampled, over {max(r['supports examined'] for r in sampled)} supports each; "
              "a sampled δ_K is a lower bound)." if sampled else "."),
           f"At K = 2 the value is exact in all {len(k2)} cases: a pair's Gram matrix has eigenvalues 1 ± G_ab, so "
           f"δ_2 is the largest off-diagonal |G_ab|, which is μ"
           + (" (here δ_2 = μ in every case)." if all(abs(r["δ_K"] - r["μ"]) <= 1e-12 for r in k2) else
              f" (here δ_2 differs from μ in {sum(abs(r['δ_K'] - r['μ']) > 1e-12 for r in k2)} cases)."),
           f"Inside the hypothesis, (K−1)μ < 1, there are {len(inside)} cases with K ≥ 2 (up to K = "
           f"{max((r['K'] for r in inside), default=0)}); the RIP holds in {len(held_in)} of them."]
    tight = [r for r in rows if r["exact"] and r["K"] >= 3 and abs(r["δ_K"] - r["bound (K−1)μ"]) <= 1e-6]
    if tight:
        fams = sorted({r["family"] for r in tight})
        out.append(f"The bound is attained, δ_K = (K−1)μ to six digits, in {len(tight)} exactly computed cases with "
                   f"K ≥ 3 ({' and '.join(fams)} atoms).")
    packed = [r for r in rows if r["family"] == "packed" and r["K"] >= 3]
    if packed:
        ratio = max(r["δ_K"] / r["bound (K−1)μ"] for r in packed)
        out.append(f"For the packed dictionaries (K ≥ 3) the sampled δ_K reaches at most {fmt(ratio)} of the bound.")
    failed = [r for r in rows if not r["inside"] and not r["RIP holds"]]
    if failed:
        dep = [r for r in failed if r["RIP lost through"].startswith("λ_min")]
        top = [r for r in failed if not r["RIP lost through"].startswith("λ_min")]
        out.append(f"Outside it δ_K ≥ 1 in {len(failed)} cases, for two different reasons.")
        if dep:
            r = min(dep, key=lambda r: r["K"])
            out.append(f"In {len(dep)} of them λ_min reaches 0: K atoms are linearly dependent, so a K-sparse code is "
                       f"sent to zero and injectivity is lost (first: {r['dictionary']} at K = {r['K']}, λ_min = "
                       f"{fmt(zero(r['λ_min']))}, δ_K = {fmt(r['δ_K'])}).")
        if top:
            r = min(top, key=lambda r: r["K"])
            out.append(f"In {len(top)} only λ_max reaches 2: every K atoms stay independent (the smallest λ_min among "
                       f"them is {fmt(min(x['λ_min'] for x in top))} > 0) and only the upper inequality fails (first: "
                       f"{r['dictionary']} at K = {r['K']}, λ_max = {fmt(r['λ_max'])}, δ_K = {fmt(r['δ_K'])}).")
    else:
        out.append("Outside it no case in this run loses the RIP.")
    spared = [r for r in rows if not r["inside"] and r["RIP holds"]]
    if spared:
        r = spared[0]
        out.append(f"In {len(spared)} other cases outside the hypothesis no {'examined' if r['exact'] else 'sampled'} "
                   f"support breaks the RIP (for example {r['dictionary']}, K = {r['K']}: (K−1)μ = "
                   f"{fmt(r['bound (K−1)μ'])}, δ_K {'=' if r['exact'] else '≥'} {fmt(r['δ_K'])}): a failed hypothesis "
                   "removes the guarantee, not necessarily the property.")
    return " ".join(out)


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
        a, b = r["witness nnz"]
        out.append(f"For the {r['dictionary']} the bound is exact: spark = {r['spark']} = 1 + 1/μ, the bound certifies "
                   f"K ≤ {r['K certified']}, and K = {r['K non-unique']} already has two codes with {a} and {b} "
                   "nonzeros" + (" (a tie: equally sparse)." if a == b else f" (the sparser one has {min(a, b)})."))
    loose = [r for r in wit if r["K non-unique"] > r["K certified"] + 1]
    if loose:
        r = max(loose, key=lambda r: r["K non-unique"] - r["K certified"])
        out.append(f"For generic atoms the bound is conservative: the {r['dictionary']} dictionary (μ = {fmt(r['μ'])}) "
                   f"is certified up to K = {r['K certified']} but its codes stay unique up to K = {r['K non-unique'] - 1}.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Theorem 3: exact recovery by basis pursuit and OMP


def sweep_scope_prose(rec: Mapping, K_max: int) -> str:
    """Whether the sweep reaches the sparsity where random codes stop being recovered."""
    s = rk.recovery_summary(rec)
    top, H = max(rec["K"]), rec["H"]
    bound = max(th.uniqueness_bound(mu) for mu in rec["mu"])
    missed = s["basis_pursuit"]["outside_failed_cells"] + s["omp"]["outside_failed_cells"]
    cap = f" (K_max capped at H = {H})" if K_max > top else ""
    reach = (f"With K_max = {K_max} the sweep runs to K = {top}{cap}, K/H = {fmt(top / H)}, {fmt(top / bound)} times the "
             "largest bound")
    if missed:
        i = rec["K"].index(top)
        bp, om = (sum(rec[n][i]) / len(rec["mu"]) for n in ("basis_pursuit", "omp"))
        return (reach + f", far enough to see random codes stop being recovered: at K = {top} basis pursuit recovers "
                f"{fmt(bp)} of them on average over the dictionaries and OMP {fmt(om)}.")
    return (reach + ", not far enough to see random codes stop being recovered: every code of the sweep comes back. "
            "Raise K_max to see where recovery stops.")


def first_miss_rows(rec: Mapping) -> list[dict]:
    """Per dictionary: the first K where each algorithm misses a code, how many of the n codes it
    missed there, and the 95% Wilson interval of its recovery rate in that cell."""
    s = rk.recovery_summary(rec)

    def cells(name, d):
        if d is None:
            return {f"{name}: first K with a miss": "— (none)", f"{name}: codes missed": "—", f"{name}: rate, 95% interval": "—"}
        return {f"{name}: first K with a miss": d["K"], f"{name}: codes missed": f"{d['missed']} of {d['n']}",
                f"{name}: rate, 95% interval": f"{fmt(d['rate'])} {interval(d['interval'])}"}
    return [{"μ": fmt(mu)} | cells("BP", b) | cells("OMP", o)
            for mu, b, o in zip(rec["mu"], s["basis_pursuit"]["first_failure_detail"], s["omp"]["first_failure_detail"])]


def recovery_prose(rec: Mapping) -> str:
    s = rk.recovery_summary(rec)
    K, mus, n = rec["K"], rec["mu"], rec["n_trials"]
    bp, om = s["basis_pursuit"], s["omp"]
    out = [f"Inside the bound ({s['cells_inside']} cells, {s['cells_inside_K2']} of them with K ≥ 2, up to "
           f"K = {s['K_inside_max']}) the lowest exact-recovery rate is {fmt(bp['min_inside'])} for basis pursuit and "
           f"{fmt(om['min_inside'])} for OMP, over {n} random signed codes per cell with |x_a| in "
           f"[{fmt(rec['x_range'][0])}, {fmt(rec['x_range'][1])}]."]
    if bp["outside_failed_cells"] == 0 and om["outside_failed_cells"] == 0:
        out.append(f"Outside it, up to K = {max(K)}, both still recover every code in all {bp['outside_cells']} cells: "
                   f"this sweep does not reach the sparsity where random codes start to fail.")
        return " ".join(out)

    def first(name, d):
        fails = [x for x in d["first_failure_detail"] if x is not None]
        if not fails:
            return f"{name} recovers every code in every cell of the sweep"
        x = min(fails, key=lambda x: (x["K"], x["rate"]))
        ratios = [f["K"] / th.uniqueness_bound(f["μ"]) for f in fails]
        return (f"{name} first misses at K = {x['K']} (μ = {fmt(x['μ'])}), on {x['missed']} of {x['n']} codes (rate "
                f"{fmt(x['rate'])}, 95% interval {interval(x['interval'])}); {d['outside_failed_cells']} of the "
                f"{d['outside_cells']} cells outside have a miss, and the first miss comes at {fmt(min(ratios))} to "
                f"{fmt(max(ratios))} times each dictionary's bound")
    out.append(f"Outside it, {first('basis pursuit', bp)}; {first('OMP', om)}.")
    weak = [x for d in (bp, om) for x in d["first_failure_detail"] if x is not None and x["interval"][1] >= 0.9]
    if weak:
        out.append(f"{len(weak)} of the first misses in the table below rest on so few missed codes that their rate's "
                   f"interval reaches {fmt(min(x['interval'][1] for x in weak))} or more: where misses begin is located only "
                   "to within a row or two of the grid.")
    cols = len(mus)
    order = (f"Basis pursuit first fails at a larger K than OMP for {s['bp_later']} of the {cols} dictionaries, "
             f"at the same K for {s['same']} and at a smaller K for {s['omp_later']}")
    if s["bp_later"] == cols:
        order += ": it degrades later than OMP for every coherence"
    elif s["omp_later"] > s["bp_later"]:
        order += ": here OMP is the more robust of the two"
    out.append(order + " (a dictionary with no miss in the sweep counts as failing beyond it).")
    return " ".join(out)


def phase_transition_prose(rec: Mapping) -> str:
    """The heat map read along K/H (a phase transition) and across μ (noise or trend)."""
    out = []
    for name, key in (("basis pursuit", "basis_pursuit"), ("OMP", "omp")):
        p = rk.phase_transition(rec, key)
        mean = p["mean rate"]
        fall = (f"its mean rate over the {len(p['μ'])} dictionaries stays at or above one half up to K = {max(p['K'])}"
                if p["K half"] is None else
                f"its mean rate over the {len(p['μ'])} dictionaries first falls below one half at K = {p['K half']} "
                f"(K/H = {fmt(p['K/H half'])})")
        if p["spread"] == 0:
            out.append(f"For {name}, {fall}, and every cell of a row has the same rate (from {fmt(mean[0])} to "
                       f"{fmt(mean[-1])} down the rows).")
            continue
        rho = p["spearman"]
        trend = ("no monotone trend in μ" if rho is None or abs(rho) < 0.5 else
                 f"a {'falling' if rho < 0 else 'rising'} trend in μ")
        noise = ("overlap: the spread is within what " if p["overlap"] else "do not overlap, so the spread exceeds what ")
        out.append(f"For {name}, {fall}. Across μ, at K = {p['spread K']} (K/H = {fmt(p['spread K/H'])}), where the rates "
                   f"spread most, they read {', '.join(fmt(v) for v in p['rates at spread K'])} for μ from "
                   f"{fmt(min(p['μ']))} to {fmt(max(p['μ']))}: {trend} (Spearman ρ = {fmt(rho)}); the 95% intervals of the "
                   f"lowest and the highest cell, {interval(p['lowest interval'])} and {interval(p['highest interval'])}, "
                   f"{noise}{p['n']} codes per cell can resolve.")
    return " ".join(out)


def nonuniqueness_prose(c: Mapping) -> str:
    """The simplex just outside Theorem 2's bound: a failure of uniqueness, not of the algorithms."""
    (a, b), (la, lb) = c["nnz"], c["l1"]
    codes = (f"two codes with {a} nonzeros each and equal ℓ1 norms ({fmt(la)})" if c["tie"] else
             f"two codes, a with {a} nonzeros (ℓ1 {fmt(la)}) and b with {b} (ℓ1 {fmt(lb)})")
    out = [f"For the simplex of {c['n']} atoms (μ = {fmt(c['μ'])}, Theorem 2's bound K < {fmt(c['bound'])}) at K = "
           f"{c['K']}, the activation of code a has {codes}: the code is not unique."]
    if c["tie"]:
        out.append("The two tie, so nothing that sees only the activation can tell which one produced it.")
    else:
        sparser = "b" if b < a else "a"
        out.append(f"Code {sparser} is the sparsest code of this activation, so it is the right answer to the problem "
                   "basis pursuit and OMP solve.")
    ret = [f"{n} returns {c[f'{k} returns']}" + ("" if c[f"{k} reproduces m"] else ", which does not reproduce the activation")
           for n, k in (("basis pursuit", "basis_pursuit"), ("OMP", "omp"))]
    good = all(c[f"{k} reproduces m"] for k in ("basis_pursuit", "omp"))
    out.append(f"{ret[0][0].upper()}{ret[0][1:]} and {ret[1]}" + (": each a correct answer. This is a failure of uniqueness, not of the algorithms."
                                           if good else "."))
    return " ".join(out)


def erc_prose(c: Mapping) -> str:
    """The unique code that OMP misses beyond Tropp's exact recovery condition."""
    uniq = ("only the true support" if c["unique"] else
            f"{len(c['supports of ≤ K atoms that represent m'])} supports")
    out = [f"A code that is unique and still missed: {c['N']} atoms in R^{c['H']} (the {c['H']} basis vectors and their "
           f"normalised sum, rotated; μ = {fmt(c['μ'])}, so Theorem 3's bound covers only K < {fmt(c['bound'])}) and a code "
           f"with K = {c['K']} nonzeros. A brute-force search over every support of at most K atoms finds {uniq}"
           + (f"; the next sparsest code needs {c['atoms of the next sparsest code']} atoms." if c["unique"] else ".")]
    erc = c["ERC"]
    out.append(f"Tropp's exact recovery coefficient of the support is {fmt(erc)} "
               + ("≥ 1: his condition fails." if erc >= 1 else "< 1: his condition holds."))
    first = "an atom outside the support" if not c["OMP's first atom is true"] else "a true atom"
    out.append(f"OMP picks {first} first and {'recovers the code' if c['omp_recovers'] else 'misses the code'}; basis "
               f"pursuit {'recovers it' if c['bp_recovers'] else 'misses it too'}.")
    if c["unique"] and c["bp_recovers"] and not c["omp_recovers"]:
        out.append("Here the algorithm fails, not uniqueness: the condition is necessary for OMP and only sufficient for "
                   "basis pursuit.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Theorem 4: the threshold encoder recovers the support


def threshold_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"]]
    k2 = [r for r in inside if r["K"] >= 2]
    r0 = rows[0]
    out = [f"In the dictionary's Euclidean geometry (S = I), with μ = {fmt(r0['μ'])} and coefficients in "
           f"[{fmt(r0['x_min'])}, {fmt(r0['x_max'])}], the theorem's interval "
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
                   f"and its upper end at most {fmt(hi_gap)} too low"
                   + (": for these packed atoms both ends are nearly tight." if max(lo_gap, hi_gap) < 0.05 * r0["x_max"]
                      else "."))
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


def encoder_geometry_prose(rows: Sequence[Mapping], true_rows: Sequence[Mapping]) -> str:
    """The encoder in four geometries (one K), and under the true S̃ for several K."""
    by = {r["geometry"].split(" ")[0]: r for r in rows}
    out = []
    for r in rows:
        name = r["geometry"][0].upper() + r["geometry"][1:]
        out.append(f"{name}: μ = {fmt(r['μ'])}, atom norms ν from {fmt(r['ν min'])} to {fmt(r['ν max'])}, so the "
                   f"rescaled coefficients lie in [{fmt(r['x̄_min'])}, {fmt(r['x̄_max'])}]; the interval is "
                   + (f"({fmt(r['theorem low'])}, {fmt(r['theorem high'])}), with a recovery rate of at least "
                      f"{fmt(r['min rate over interval'])} across it" if r["inside"] else "empty")
                   + f", and the best threshold's recovery rate is {fmt(r['best rate over τ'])}.")
    t = true_rows
    ins = [r["K"] for r in t if r["inside"]]
    mu = t[0]["μ"]
    out.append(f"Under the true S̃ of this over-complete dictionary (N = 2H) the atoms have coherence {fmt(mu)} and, "
               f"rescaled to unit norm, coefficients in [{fmt(t[0]['x̄_min'])}, {fmt(t[0]['x̄_max'])}]: the theorem's "
               + (f"interval is non-empty for K ≤ {max(ins)} (of K = {', '.join(str(r['K']) for r in t)} checked), where "
                  f"the recovery rate across it is at least {fmt(min(r['min rate over interval'] for r in t if r['inside']))}"
                  if ins else "interval is empty at every K checked")
               + f"; the best threshold's recovery rate is {', '.join(fmt(r['best rate over τ']) for r in t)} at K = "
               f"{', '.join(str(r['K']) for r in t)}.")
    if "pull-back" in by and "true" in by:
        out.append(f"The pull-back S_A and the true S̃ are different geometries for the same atoms (μ {fmt(by['pull-back']['μ'])} "
                   f"and {fmt(by['true']['μ'])}): a theorem checked under one is not checked under the other.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# The closing summary


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """A slide-sized Markdown table: each theorem, its classical source, hypothesis, and what this run's
    check showed inside (K ≥ 2) and outside the hypothesis."""
    rip = metrics["rip"]
    r_in = [r for r in rip if r["inside"] and r["K"] >= 2]
    r_out = [r for r in rip if not r["inside"] and not r["RIP holds"]]
    r_dep = [r for r in r_out if r["RIP lost through"].startswith("λ_min")]
    u = metrics["uniqueness"]
    u_in = [r for r in u if r["K certified"] >= 2]
    u_out = [r for r in u if r["witness"] and not r["inside at K non-unique"]]
    s = rk.recovery_summary(metrics["recovery"])
    w, e = metrics["nonuniqueness"], metrics["erc_case"]
    t = metrics["tsae"]
    t_in = [r for r in t if r["inside"] and r["K"] >= 2]
    t_fail = [r for r in t if not r["some τ works"]]
    rows = [
        ("RIP", "Candès–Tao 2005 (the RIP); Gershgorin bound: Foucart–Rauhut 2013",
         "(K−1)μ < 1 ⇒ δ_K ≤ (K−1)μ < 1",
         f"{sum(r['RIP holds'] for r in r_in)}/{len(r_in)} cases hold (K ≤ {max((r['K'] for r in r_in), default=0)})",
         f"δ_K ≥ 1 in {len(r_out)} cases: {len(r_dep)} through λ_min = 0 (dependent atoms), {len(r_out) - len(r_dep)} "
         "through λ_max ≥ 2 only"),
        ("Uniqueness", "Donoho–Elad 2003; Gribonval–Nielsen 2003; sharp: Cai–Wang–Xu 2010",
         "μ < 1/(2K−1) ⇒ the K-sparse code is unique",
         f"{sum(r['unique at K certified'] for r in u_in)}/{len(u_in)} dictionaries unique at K ≥ 2",
         f"two codes, one m, in {len(u_out)} dictionaries"),
        ("Recovery (BP, OMP)", "Donoho–Elad 2003; Tropp 2004", "same bound ⇒ BP and OMP return the code",
         f"min rate BP {fmt(s['basis_pursuit']['min_inside_K2'])}, OMP {fmt(s['omp']['min_inside_K2'])} "
         f"({s['cells_inside_K2']} cells)",
         f"misses in {s['basis_pursuit']['outside_failed_cells']} (BP), {s['omp']['outside_failed_cells']} (OMP) of "
         f"{s['basis_pursuit']['outside_cells']} cells; simplex K = {w['K']}: "
         + ("two equally sparse codes (not unique)" if w["tie"] else "not unique") + "; a unique code beyond Tropp's "
         f"condition: BP {'finds it' if e['bp_recovers'] else 'misses it'}, OMP {'finds it' if e['omp_recovers'] else 'misses it'}"),
        ("Threshold encoder", "thresholding (Elad 2010)", "x ≥ 0, μKx_max < τ < x_min − μ(K−1)x_max",
         f"min rate {fmt(min((r['min rate over interval'] for r in t_in), default=None))} at K ≤ "
         f"{max((r['K'] for r in t_in), default=0)}; worst-case codes kept at "
         f"{sum(bool(r['worst codes recovered']) for r in t_in)} of {len(t_in)} such K",
         (f"no τ works from K = {t_fail[0]['K']}" if t_fail else "a τ still works at every K checked")),
    ]
    head = "| theorem | classical source | hypothesis ⇒ conclusion | inside, K ≥ 2 (this run) | outside (this run) |"
    lines = [head, "|---|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)
