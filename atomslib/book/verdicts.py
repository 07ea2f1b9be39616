"""The verdict matrix: one row per claim of the paper, one column per model and layer, each cell
coloured by its verdict and holding its number in the book's format, with the health of the SAEs
behind it. The intro opens with it (`findings.findings_markdown`) and the conclusions repeat it.

A cell gathers every measurement of its claim on its model and layer (metric variants, splits):
`supported` or `not supported` when the conclusive ones agree, `mixed` when they disagree,
`INCONCLUSIVE` when none is conclusive (every SAE behind it failed the health bar). Its number is the
first measurement a chapter reported there (the chapter's headline), as the findings list gives it;
its tooltip lists them all. Claims measured without a model (the theory chapters, on synthetic atoms)
sit in the column `synthetic`.
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .results import CLAIMS_BY_ID, INCONCLUSIVE, PAPER_CLAIMS, fmt

MIXED = "mixed"
CELL_VERDICTS = ("supported", "not supported", MIXED, INCONCLUSIVE, "not measured")
# CSS class (styled in _static/atoms.css) and the symbol that says the verdict without colour
CELL_STYLE = {"supported": ("v-supported", "✓"), "not supported": ("v-not-supported", "✗"),
              MIXED: ("v-mixed", "±"), INCONCLUSIVE: ("v-inconclusive", "?"), "not measured": ("v-none", "")}
SYNTHETIC = "synthetic"   # the column of claims measured without a model
SAE_CLAIMS = ("features.", "atoms.", "capacity.", "identification.")   # claims measured on trained SAEs


class Column(NamedTuple):
    """One column of the matrix: a model (None: synthetic data) and a layer (None: not per layer)."""
    model: str | None
    layer: int | None

    @property
    def label(self) -> str:
        return "layer " + str(self.layer) if self.layer is not None else ("all layers" if self.model else SYNTHETIC)


class Cell(NamedTuple):
    """One cell: its verdict (one of CELL_VERDICTS), the headline number as `fmt` writes it, every
    measurement behind it in words, and the health of the SAEs behind it."""
    claim_id: str
    column: Column
    verdict: str
    number: str
    measurements: list[str]
    health: str          # "healthy", "unhealthy", "partly unhealthy", "partly recorded, healthy", "not recorded",
    #                      or "" (a claim that rests on no trained SAE)
    health_notes: list[str]


def cell_verdict(verdicts: Sequence[str]) -> str:
    """The verdict of a cell from those of its measurements (see the module docstring)."""
    conclusive = {v for v in verdicts if v in ("supported", "not supported")}
    if not conclusive:
        return INCONCLUSIVE if INCONCLUSIVE in verdicts else "not measured"
    return conclusive.pop() if len(conclusive) == 1 else MIXED


def _health(claim_id: str, measured: Sequence[Mapping]) -> tuple[str, list[str]]:
    records = [r.get("health") for r in measured]
    notes = [f"{r['variant']}, {r['split']}: {r.get('SAE health') or '—'}" for r in measured if r.get("health")]
    known = [h for h in records if h]
    if not known:   # no record: say so where the claim rests on a trained SAE, nothing where none is involved
        return ("not recorded" if claim_id.startswith(SAE_CLAIMS) else ""), notes
    bad = sum(not h.get("healthy", True) for h in known)
    if bad == 0:
        return ("healthy" if len(known) == len(records) else "partly recorded, healthy"), notes
    return ("unhealthy" if bad == len(records) else "partly unhealthy"), notes


def verdict_matrix(rows: Sequence[Mapping]) -> tuple[list[Column], dict[tuple[str, Column], Cell]]:
    """(columns, {(claim_id, column): cell}) from `results.evaluate_claims` rows; columns ordered
    synthetic first, then by model (in the order the rows name them) and layer. A claim with no measurement in a column has no cell."""
    measured = [r for r in rows if r["verdict"] != "not measured"]
    models = list(dict.fromkeys(r.get("model") for r in measured))   # as the results were read: the book's first model first
    columns = sorted({Column(r.get("model"), r.get("layer")) for r in measured},
                     key=lambda c: (c.model is not None, models.index(c.model), c.layer is None, c.layer or 0))
    cells = {}
    for c in PAPER_CLAIMS:
        for col in columns:
            mine = [r for r in measured if r["claim_id"] == c.claim_id and Column(r.get("model"), r.get("layer")) == col]
            if not mine:
                continue
            health, notes = _health(c.claim_id, mine)
            cells[(c.claim_id, col)] = Cell(
                c.claim_id, col, cell_verdict([r["verdict"] for r in mine]), fmt(mine[0]["value"]),
                [f"{fmt(r['value'])} ({r['variant']}, {r['split']}): {r['verdict']}" for r in mine], health, notes)
    return columns, cells


def short_statement(claim_id: str) -> str:
    """A claim's statement without its "(value: ...)" note, first letter upper case."""
    s = re.sub(r"\s*\(value:[^)]*\)", "", CLAIMS_BY_ID[claim_id].statement).strip()
    return (s[:1].upper() + s[1:]) if s[:1].isascii() else s


HEALTH_MARK = {"unhealthy": "SAE unhealthy", "partly unhealthy": "some SAEs unhealthy", "healthy": "SAE healthy",
               "partly recorded, healthy": "SAE healthy", "not recorded": "SAE health not recorded"}


def verdict_matrix_html(rows: Sequence[Mapping]) -> str:
    """The matrix as an HTML table (class `atoms-verdicts`), a legend above it; "" when nothing was
    measured. Each cell: the number, a symbol for its verdict (✓ ✗ ± ?), the SAE's health on a small
    line, and a tooltip with every measurement and health record behind it."""
    columns, cells = verdict_matrix(rows)
    if not columns:
        return ""
    e = html.escape
    models = []
    for col in columns:
        if not models or models[-1][0] != col.model:
            models.append([col.model, 0])
        models[-1][1] += 1
    head1 = "".join(f'<th colspan="{n}" scope="colgroup">{e(m or SYNTHETIC)}</th>' for m, n in models)
    head2 = "".join(f'<th scope="col">{e(c.label if c.model else "")}</th>' for c in columns)
    body = []
    for c in PAPER_CLAIMS:
        if not any((c.claim_id, col) in cells for col in columns):
            continue
        tds = []
        for col in columns:
            cell = cells.get((c.claim_id, col))
            if cell is None:
                tds.append('<td class="v-none" title="not measured here">—</td>')
                continue
            cls, mark = CELL_STYLE[cell.verdict]
            tip = "\n".join([f"{c.claim_id} on {col.model or SYNTHETIC}" + (f", layer {col.layer}" if col.layer is not None
                                                                        else "") + f": {cell.verdict}",
                             *cell.measurements, *(["SAE health:", *cell.health_notes] if cell.health_notes else [])])
            health = HEALTH_MARK.get(cell.health)
            tds.append(f'<td class="{cls}" data-verdict="{e(cell.verdict)}" title="{_attr(tip)}">'
                       f'<span class="v-number">{e(cell.number)}</span> <span class="v-mark">{mark}</span>'
                       + (f'<br><span class="v-health{" v-unhealthy" if "unhealthy" in cell.health else ""}">'
                          f'{e(health)}</span>' if health else "") + "</td>")
        body.append(f'<tr><th scope="row" title="{_attr(f"{c.statement}; paper: {c.paper}; supported if {c.rule}")}">'
                    f'{e(short_statement(c.claim_id))}<br><code>{e(c.claim_id)}</code></th>{"".join(tds)}</tr>')
    legend = " ".join(f'<span class="{CELL_STYLE[v][0]}">{CELL_STYLE[v][1]} {e(v)}</span>' for v in CELL_VERDICTS[:4])
    return (f'<div class="atoms-verdicts-wrap"><p class="atoms-verdicts-legend">{legend}</p>'
            f'<table class="atoms-verdicts"><thead><tr><th rowspan="2" scope="col">claim</th>{head1}</tr>'
            f'<tr>{head2}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _attr(text: str) -> str:
    """`text` as an HTML attribute value on one line (a raw HTML block of Markdown ends at a blank line)."""
    return html.escape(text).replace("\n", "&#10;")
