"""The theory chapter's exercises (notebooks/01_theory.md): each one's task and its computed answer.

Each `*_exercise` function runs the chapter's check with the exercise's parameter value and returns
the task (with its direction word, "raise" or "lower", chosen by comparing the value with the one this
run used) and the expected outcome, written from that check. `exercise_markdown` puts the answer in a
dropdown under the question, so that a reader can try first. Notation as in
`atomslib.book.theory_prose`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import recovery_checks as rk
from .. import theory as th
from .. import theory_checks as tc
from .results import fmt
from .theory_prose import relation


def exercise_markdown(notebook: str, task: str, assignment: str, expected: str) -> str:
    """An exercise admonition: the task, the command that runs it, and the computed answer folded
    into a dropdown."""
    return (f"````{{admonition}} Exercise\n{task} Run `atoms run {notebook} -p {assignment}`.\n\n"
            f"```{{dropdown}} Answer (computed by this run with that value)\n{expected}\n```\n````")


def direction(current: float, new: float, up: str, down: str) -> str:
    """`up` when new > current, else `down` (the word a task uses for the change it asks for)."""
    return up if new > current else down


# ----------------------------------------------------------------------------------------------
# Theorem 1


def rip_exercise(H: int, eq_eps: float, ex_eps: float, seed: int = 0) -> dict:
    """The equiangular family at cosine ex_eps: the first order K that loses the RIP, and how."""
    rows = tc.rip_equiangular_rows(H, ex_eps, seed)
    top = [r for r in rows if r["dictionary"] == rows[-1]["dictionary"]]
    lost = next((r for r in top if not r["RIP holds"]), None)
    word = direction(eq_eps, ex_eps, "more", "less")
    task = (f"Make the equiangular atoms {word} coherent (every pair at cosine {fmt(ex_eps)} instead of {fmt(eq_eps)}). "
            "At which order $K$ is the RIP lost, through which eigenvalue, and how does $\\delta_K$ compare with the bound?")
    N = top[0]["N"]
    if lost:
        rel = relation(lost["δ_K"], lost["bound (K−1)μ"], 1e-9)
        expected = (f"for {lost['dictionary']} (N = {N} atoms, μ = {fmt(lost['μ'])}) the RIP is first lost at K = {lost['K']}, "
                    f"with δ_K = {fmt(lost['δ_K'])} {rel} (K−1)μ = {fmt(lost['bound (K−1)μ'])}, through λ_max = "
                    f"{fmt(lost['λ_max'])}, while λ_min = {fmt(lost['λ_min'])} "
                    + ("> 0: every K atoms stay independent." if lost["λ_min"] > 1e-9 else "= 0: K atoms are dependent.")
                    + f" (Orders checked: {', '.join(str(r['K']) for r in top)}.)")
    else:
        expected = (f"for {top[0]['dictionary']} (N = {N} atoms) no order checked ({', '.join(str(r['K']) for r in top)}) "
                    "loses the RIP.")
    return {"eq_eps": ex_eps, "dictionary": top[0]["dictionary"], "μ": top[0]["μ"],
            "first_K_lost": lost["K"] if lost else None, "δ_K": lost["δ_K"] if lost else None,
            "K_checked": [r["K"] for r in top], "task": task, "expected": expected}


# ----------------------------------------------------------------------------------------------
# Theorem 2


def uniqueness_exercise(simplex_atoms: int, ex_n: int, seed: int = 0) -> dict:
    """The simplex of ex_n atoms: what the bound certifies, where two codes appear, and whether that
    case sits on the boundary μ = 1/(2K − 1) (then the strict inequality cannot be relaxed)."""
    r = tc.uniqueness_row(f"simplex n={ex_n}", th.regular_simplex(ex_n, seed=seed))
    mu_now = 1 / (simplex_atoms - 1)
    K = r["K non-unique"]
    limit = 1 / (2 * K - 1)
    word = direction(mu_now, r["μ"], "Raise", "Lower")
    task = (f"{word} μ from {fmt(mu_now)} to 1/(n − 1) = {fmt(r['μ'])} with a simplex of n = {ex_n} atoms. Which K does "
            "the bound certify, and at which K do two codes share one activation?")
    a, b = r["witness nnz"]
    on_boundary = relation(r["μ"], limit, 1e-9) == "="
    expected = (f"μ = {fmt(r['μ'])}; the bound certifies K ≤ {r['K certified']}; at K = {K} two codes with {a} and {b} "
                f"nonzeros share one activation (relative difference {fmt(r['witness ‖m_a − m_b‖/‖m_a‖'])}). "
                + (f"There μ = 1/(2K−1) = {fmt(limit)} exactly: the strict inequality in the theorem cannot be relaxed to ≤."
                   if on_boundary else
                   f"There μ > 1/(2K−1) = {fmt(limit)}: the witness lies past the boundary, so this case does not show "
                   "that the strict inequality is needed (an even n does)."))
    return {"simplex_atoms": ex_n, "μ": r["μ"], "1/(2K−1)": limit, "K certified": r["K certified"], "K non-unique": K,
            "witness nnz": r["witness nnz"], "on boundary": on_boundary, "task": task, "expected": expected}


# ----------------------------------------------------------------------------------------------
# Theorem 3


def recovery_exercise(H: int, ex_H: int, K_max: int, n_trials: int, seed: int = 0) -> dict:
    """The recovery sweep at width ex_H: the coherences, the bound, and the first misses in K and K/H."""
    rec = rk.recovery_sweep(tc.packed_dictionaries(ex_H, seed), tc.sparsity_grid(K_max, ex_H), n_trials, seed)
    s = rk.recovery_summary(rec)

    def first(name):
        fails = [d for d in s[name]["first_failure_detail"] if d is not None]
        return min(fails, key=lambda d: (d["K"], d["rate"])) if fails else None
    bp, om = first("basis_pursuit"), first("omp")
    word = direction(H, ex_H, "Grow", "Shrink")
    task = (f"{word} the model width from H = {H} to H = {ex_H}. The packed dictionaries' coherences change with H, and so "
            "does H itself: where do the first misses come, in K and in K/H?")

    def say(name, d):
        if d is None:
            return f"{name} misses no code up to K = {max(rec['K'])}"
        return (f"{name} first misses at K = {d['K']} (K/H = {fmt(d['K'] / ex_H)}), on {d['missed']} of {d['n']} codes "
                f"(rate {fmt(d['rate'])}, 95% interval [{fmt(d['interval'][0])}, {fmt(d['interval'][1])}])")
    expected = (f"coherences {', '.join(fmt(m) for m in rec['mu'])}; the bound covers K ≤ {s['K_inside_max']}, inside it the "
                f"lowest rates are {fmt(s['basis_pursuit']['min_inside'])} (basis pursuit) and {fmt(s['omp']['min_inside'])} "
                f"(OMP); {say('basis pursuit', bp)}; {say('OMP', om)}.")
    return {"H": ex_H, "mu": rec["mu"], "K_inside_max": s["K_inside_max"], "bp_first": bp["K"] if bp else None,
            "omp_first": om["K"] if om else None, "min_inside_bp": s["basis_pursuit"]["min_inside"],
            "min_inside_omp": s["omp"]["min_inside"], "task": task, "expected": expected}


# ----------------------------------------------------------------------------------------------
# Theorem 4


def threshold_exercise(D: torch.Tensor, x_range: Sequence[float], ex_range: Sequence[float], seed: int = 0) -> dict:
    """The threshold check with coefficients in ex_range: the K the interval covers, and from which K
    no threshold works at all."""
    rows = rk.threshold_check(D, ex_range, 8, seed)
    inside = [r["K"] for r in rows if r["inside"]]
    fail = next((r["K"] for r in rows if not r["some τ works"]), None)
    ratio, ex_ratio = x_range[1] / x_range[0], ex_range[1] / ex_range[0]
    word = direction(ratio, ex_ratio, "Widen", "Narrow")
    task = (f"{word} the range of the coefficients, from [{fmt(float(x_range[0]))}, {fmt(float(x_range[1]))}] to "
            f"[{fmt(float(ex_range[0]))}, {fmt(float(ex_range[1]))}]. The interval needs $x_{{\\min}}>\\mu(2K-1)x_{{\\max}}$: "
            "which $K$ is still covered, and from which $K$ does no threshold work at all?")
    expected = (f"with coefficients in [{fmt(float(ex_range[0]))}, {fmt(float(ex_range[1]))}] the theorem's interval covers "
                f"K ≤ {max(inside) if inside else 0}"
                + (f", and from K = {fail} the worst-case codes defeat every threshold." if fail else
                   ", and some threshold works up to the largest K checked."))
    return {"x_range": list(map(float, ex_range)), "K_inside_max": max(inside) if inside else 0, "K_no_threshold": fail,
            "task": task, "expected": expected}
