"""The verdict matrix (atomslib.book.verdicts) and the findings it opens the intro with, rendered from a
results folder that holds all four verdict kinds (tests/_synthetic_results.py)."""
from __future__ import annotations

import html.parser

import pytest

from _synthetic_results import write_synthetic_results
from atomslib.book.findings import claims_markdown, findings_markdown, verdict_words
from atomslib.book.results import INCONCLUSIVE, evaluate_claims, fmt, load_model_results
from atomslib.book.verdicts import MIXED, cell_verdict, verdict_matrix_html


class _Matrix(html.parser.HTMLParser):
    """{claim_id: [{"class", "verdict", "number", "health", "title"} per column]} and the column heads."""

    def __init__(self):
        super().__init__()
        self.rows, self.heads, self._row, self._cell, self._span, self._in_code, self._in_th = {}, [], None, None, None, False, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = {"class": a.get("class"), "verdict": a.get("data-verdict"), "number": "", "health": "",
                          "title": a.get("title") or "", "text": ""}
        elif tag == "span" and self._cell is not None:
            self._span = a.get("class", "")
        elif tag == "code":
            self._in_code = True
        elif tag == "th":
            self._in_th = True
            self.heads.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._row.append(self._cell)
            self._cell = None
        elif tag == "span":
            self._span = None
        elif tag == "code":
            self._in_code = False
        elif tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_code and self._row is not None:
            self.rows[data] = self._row
        if self._in_th and not self._in_code:
            self.heads[-1] += data
        if self._cell is not None:
            self._cell["text"] += data
            if self._span and "v-number" in self._span:
                self._cell["number"] += data
            elif self._span and "v-health" in self._span:
                self._cell["health"] += data


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = write_synthetic_results(tmp_path_factory.mktemp("results"))
    return evaluate_claims(load_model_results(folder))


@pytest.fixture(scope="module")
def matrix(rows):
    m = _Matrix()
    m.feed(verdict_matrix_html(rows))
    return m


def test_cell_verdict_gathers_the_measurements_of_a_cell():
    assert cell_verdict(["supported", "supported"]) == "supported"
    assert cell_verdict(["not supported"]) == "not supported"
    assert cell_verdict(["supported", "not supported"]) == MIXED
    assert cell_verdict([INCONCLUSIVE, INCONCLUSIVE]) == INCONCLUSIVE
    assert cell_verdict([INCONCLUSIVE, "supported"]) == "supported"     # the healthy SAE decides
    assert cell_verdict([]) == "not measured"


def test_the_matrix_has_one_column_per_model_and_layer_the_books_first_model_first(matrix):
    assert [h for h in matrix.heads if h.startswith(("synthetic", "smollm2", "gemma3", "layer"))] == \
        ["synthetic", "smollm2-135m", "gemma3-270m", "layer 3", "layer 15", "layer 2", "layer 9"]
    assert all(len(cells) == 5 for cells in matrix.rows.values())


def test_the_matrix_cells_hold_all_four_verdict_kinds_with_their_numbers_and_health(matrix):
    r = matrix.rows
    # columns: synthetic, smollm2 3, smollm2 15, gemma3 2, gemma3 9
    assert r["theorem.rip"][0]["verdict"] == "supported" and r["theorem.rip"][0]["class"] == "v-supported"
    assert r["theorem.rip"][0]["number"] == "1" and r["theorem.rip"][0]["health"] == ""   # no SAE behind a theorem
    assert r["theorem.rip"][1]["class"] == "v-none" and r["theorem.rip"][1]["text"] == "—"
    assert r["theorem.l1_recovery"][0]["verdict"] == "not supported" and "✗" in r["theorem.l1_recovery"][0]["text"]

    mixed = r["atoms.r2"][1]                                   # euclid 0.99512 supported, uncentred 0.95 not
    assert (mixed["verdict"], mixed["class"], mixed["number"]) == (MIXED, "v-mixed", fmt(0.99512))
    assert "±" in mixed["text"] and mixed["health"] == "SAE healthy"
    assert "0.995 (R2=euclid, heldout): supported" in mixed["title"]
    assert "0.95 (R2=uncentred, heldout): not supported" in mixed["title"]

    bad = r["atoms.q_star"][4]                                 # gemma3-270m layer 9, an SAE that failed the bar
    assert (bad["verdict"], bad["class"], bad["number"]) == (INCONCLUSIVE, "v-inconclusive", "0.99")
    assert bad["health"] == "SAE unhealthy" and "dead units 62% > 20%" in bad["title"]

    half = r["features.r2"][3]                                 # gemma3-270m layer 2: one SAE healthy, one not
    assert half["verdict"] == "supported" and half["health"] == "some SAEs unhealthy"
    assert r["neurons.q_star"][2]["number"] == "0.000787"       # the book's format, not 0.0007874
    assert r["shift.euclid_off_90"][4]["number"] == "31" and r["shift.euclid_off_90"][4]["health"] == ""
    kinds = {c["verdict"] for cells in r.values() for c in cells if c["verdict"]}
    assert kinds == {"supported", "not supported", MIXED, INCONCLUSIVE}
    assert "capacity.r2_max" not in r                            # a claim nobody measured has no row


def test_the_intro_opens_with_the_matrix_and_the_conclusions_list_every_claim(rows):
    intro = findings_markdown(rows, profile="default", figure="generated/figures/06_conclusions_r2_q.png")
    assert '<table class="atoms-verdicts">' in intro and "06_conclusions_r2_q.png" in intro
    matrix_line = next(ln for ln in intro.splitlines() if "atoms-verdicts" in ln)
    assert matrix_line.startswith("<div") and "\n" not in matrix_line   # one raw HTML block for MyST
    assert "Ours, *" not in intro                                        # the long list left the intro
    assert "`capacity.r2_max`" in intro                                  # what was not measured is said
    listing = claims_markdown(rows, chapter_titles={"03_neurons_features_atoms": "Neurons"})
    for statement, measurement in verdict_words(rows):
        assert statement in listing.replace("\\*", "*") and measurement in listing
    assert "{doc}`Neurons <03_neurons_features_atoms>`" in listing
    assert "0.99 (inconclusive, SAE unhealthy: dead units 62% > 20%)" in listing
    assert verdict_matrix_html([r for r in rows if r["verdict"] == "not measured"]) == ""
