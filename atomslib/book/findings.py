"""The book's findings at a glance, written from the results files (never typed): for the intro page,
the verdict matrix (one row per claim, one column per model and layer) and the R²–q* figure; for the
conclusions page, one short paragraph per claim with its verdict per model and layer.

Chapter 6 (conclusions) writes `findings.md` next to the executed notebooks; `book/intro.md`
includes it, so its links and figure paths are relative to `book/` (`generated/...`). Before the
book has run, `atoms run --all` leaves `not_run_markdown()` there instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .results import INCONCLUSIVE, PAPER_CLAIMS, fmt
from .verdicts import cell_verdict, short_statement, verdict_matrix_html

FINDINGS_FILE = "findings.md"   # in the output folder (book/generated/), beside the executed notebooks


def not_run_markdown() -> str:
    """What the intro says when no chapter has written results yet."""
    return ("```{note}\nThe book has not been run yet, so there are no findings to show: `make book` runs every "
            "chapter and writes this summary from their results files.\n```\n")


def _measurement(r: Mapping) -> str:
    """`smollm2-135m, layer 3: 0.991 (supported)`, or `0.991 (supported)` without a model."""
    at = "" if r.get("model") is None else f"{r['model']}" + (f", layer {r['layer']}" if r.get("layer") is not None else "")
    verdict = f"inconclusive, SAE {r['SAE health']}" if r["verdict"] == INCONCLUSIVE else r["verdict"]
    return (f"{at}: " if at else "") + f"{fmt(r['value'])} ({verdict})"


def findings_markdown(rows: Sequence[Mapping], *, profile: str, figure: str | None = None,
                      chapter_titles: Mapping[str, str] | None = None) -> str:
    """Markdown of the findings at a glance, from `atomslib.book.results.evaluate_claims` rows: a
    sentence on what was measured, the verdict matrix (`verdicts.verdict_matrix_html`: one row per
    claim, one column per model and layer, the SAE's health in each cell), then `figure` (a path
    relative to `book/`, e.g. `generated/figures/06_conclusions_r2_q.png`). The claim-by-claim list
    (`claims_markdown`) is on the conclusions page; `chapter_titles` is accepted for symmetry with it.
    """
    measured = [r for r in rows if r["verdict"] != "not measured"]
    if not measured:
        return not_run_markdown()
    out = [f"On the `{profile}` profile, {len({r['claim_id'] for r in measured})} of the paper's {len(PAPER_CLAIMS)} "
           "claims were measured. Each cell is our verdict by the claim's stated rule on one model and layer, with "
           "its number (the chapter's headline metric) and the health of the SAE it was measured on; point at a "
           "cell for every metric variant and split behind it. {doc}`generated/06_conclusions` goes through the "
           "claims one by one, with the paper's numbers beside ours."
           + (" The numbers of the `quick` profile are smoke-test values that mean nothing." if profile == "quick"
              else ""), "", verdict_matrix_html(rows), ""]
    if figure:
        out += [f"```{{figure}} {figure}\n:width: 70%\n\nNeurons, features and atoms in the R²–q* plane: ours "
                "(crosses, per model and layer) beside the paper's values (hollow markers, a reference).\n```", ""]
    missing = [c.claim_id for c in PAPER_CLAIMS if not any(r["claim_id"] == c.claim_id for r in measured)]
    if missing:
        out += ["Not measured by this run: " + ", ".join(f"`{m}`" for m in missing) + "."]
    return "\n".join(out).rstrip("\n") + "\n"


def claims_markdown(rows: Sequence[Mapping], *, doc_prefix: str = "",
                    chapter_titles: Mapping[str, str] | None = None) -> str:
    """The claim-by-claim list of the conclusions page: per claim, the statement, the paper's number
    (a reference), the overall verdict (`verdicts.cell_verdict` over every measurement) and each
    measurement's verdict by model and layer (the first metric variant a chapter reported there, its
    headline; an inconclusive one with the SAE's health), then a link to the chapter
    behind it (`{doc}` targets are `doc_prefix + chapter`; `chapter_titles` names them)."""
    titles = dict(chapter_titles or {})
    measured = [r for r in rows if r["verdict"] != "not measured"]
    out = []
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
        overall = cell_verdict([r["verdict"] for r in mine])
        link = f"{{doc}}`{titles.get(c.chapter, c.chapter)} <{doc_prefix}{c.chapter}>`"
        statement = short_statement(c.claim_id).replace("*", "\\*")   # q* is not emphasis
        out.append(f"- **{statement}** (`{c.claim_id}`) — paper: {c.paper}; rule: {c.rule}. Ours, *{overall}*: "
                   + "; ".join(parts) + f". See {link}.")
    return "\n".join(out) + "\n" if out else "No claim was measured yet.\n"


def verdict_words(rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(claim statement less its first letter, "model, layer: value (verdict)") of every headline
    measurement, as `claims_markdown` writes them: what the book test looks for on the conclusions page."""
    seen, out = set(), []
    for r in rows:
        if r["verdict"] == "not measured" or (r["claim_id"], r.get("model"), r.get("layer")) in seen:
            continue
        seen.add((r["claim_id"], r.get("model"), r.get("layer")))
        out.append((short_statement(r["claim_id"])[1:], _measurement(r)))
    return out
