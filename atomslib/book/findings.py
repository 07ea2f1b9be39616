"""The book's findings at a glance: one short paragraph per claim of the paper, with its verdict per
model and layer, written from the results files (never typed) for the intro page.

Chapter 6 (conclusions) writes `findings.md` next to the executed notebooks; `book/intro.md`
includes it, so its links and figure paths are relative to `book/` (`generated/...`). Before the
book has run, `atoms run --all` leaves `not_run_markdown()` there instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .results import CLAIMS_BY_ID, PAPER_CLAIMS, fmt

FINDINGS_FILE = "findings.md"   # in the output folder (book/generated/), beside the executed notebooks


def not_run_markdown() -> str:
    """What the intro says when no chapter has written results yet."""
    return ("```{note}\nThe book has not been run yet, so there are no findings to show: `make book` runs every "
            "chapter and writes this summary from their results files.\n```\n")


def _measurement(r: Mapping) -> str:
    """`smollm2-135m, layer 3: 0.9912 (supported)`, or `0.9912 (supported)` without a model."""
    at = "" if r.get("model") is None else f"{r['model']}" + (f", layer {r['layer']}" if r.get("layer") is not None else "")
    return (f"{at}: " if at else "") + f"{fmt(r['value'])} ({r['verdict']})"


def findings_markdown(rows: Sequence[Mapping], *, profile: str, figure: str | None = None,
                      chapter_titles: Mapping[str, str] | None = None) -> str:
    """Markdown of the findings from `atomslib.book.results.evaluate_claims` rows.

    Per claim: the statement, the paper's number (a reference), and each measurement's verdict by
    model and layer: the first metric variant a chapter reported for that model and layer (its
    headline; chapter 6 lists every variant), then a link to the chapter behind it. `figure` (a path
    relative to `book/`, e.g. `generated/figures/06_conclusions_r2_q.png`) is shown first;
    `chapter_titles` names the linked chapters.
    """
    titles = dict(chapter_titles or {})
    measured = [r for r in rows if r["verdict"] != "not measured"]
    if not measured:
        return not_run_markdown()
    out = [f"On the `{profile}` profile, {len({r['claim_id'] for r in measured})} of the paper's {len(PAPER_CLAIMS)} "
           "claims were measured. Each line gives the paper's claim, its number (a reference, not ours), and our "
           "verdict by the claim's stated rule, per model and layer; {doc}`generated/06_conclusions` has every "
           "metric variant and split." + (" The numbers of the `quick` profile are smoke-test values that mean "
                                          "nothing." if profile == "quick" else ""), ""]
    if figure:
        out += [f"```{{figure}} {figure}\n:width: 70%\n\nNeurons, features and atoms in the R²–q* plane: ours "
                "(crosses, per model and layer) beside the paper's values (hollow markers, a reference).\n```", ""]
    for c in PAPER_CLAIMS:
        mine = [r for r in measured if r["claim_id"] == c.claim_id]
        if not mine:
            continue
        seen, parts = set(), []
        for r in mine:
            where = (r.get("model"), r.get("layer"))
            if where in seen:
                continue
            seen.add(where)
            parts.append(_measurement(r))
        verdicts = {r["verdict"] for r in mine}
        overall = ("supported" if verdicts == {"supported"} else "not supported" if verdicts == {"not supported"}
                   else "mixed")
        link = f"{{doc}}`{titles.get(c.chapter, c.chapter)} <generated/{c.chapter}>`"
        first = c.statement[:1].upper() if c.statement[:1].isascii() else c.statement[:1]   # δ_K, μ stay lower case
        statement = (first + c.statement[1:]).replace("*", "\\*")   # q* is not emphasis
        out.append(f"- **{statement}** — paper: {c.paper}; rule: {c.rule}. Ours, *{overall}*: "
                   + "; ".join(parts) + f". See {link}.")
    missing = [c.claim_id for c in PAPER_CLAIMS if not any(r["claim_id"] == c.claim_id for r in measured)]
    if missing:
        out += ["", "Not measured by this run: " + ", ".join(f"`{m}`" for m in missing) + "."]
    return "\n".join(out) + "\n"


def verdict_words(rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(claim statement less its first letter, "model, layer: value (verdict)") of every headline
    measurement, as `findings_markdown` writes them: what the book test looks for on the intro page."""
    seen, out = set(), []
    for r in rows:
        if r["verdict"] == "not measured" or (r["claim_id"], r.get("model"), r.get("layer")) in seen:
            continue
        seen.add((r["claim_id"], r.get("model"), r.get("layer")))
        out.append((CLAIMS_BY_ID[r["claim_id"]].statement[1:], _measurement(r)))
    return out
