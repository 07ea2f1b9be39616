"""The book wing's display helpers (atomslib.book): figures saved, listed and captioned; tables in
the book's number format; prose as Markdown."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from atomslib.book.results import fmt
from atomslib.book import Page, caption_html


@pytest.fixture
def shown(monkeypatch):
    """What IPython.display.display receives (the objects, not their text)."""
    got = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: got.append((objs, kw)))
    return got


def test_show_saves_lists_and_numbers_the_figures(tmp_path, shown):
    page = Page("03_neurons_features_atoms", tmp_path / "figures")
    for name in ("plane", "curve"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        page.show(fig, name, f"A line ({name}); 2 points, seed 0.")
    assert page.figures == ["figures/03_neurons_features_atoms_plane.png", "figures/03_neurons_features_atoms_curve.png"]
    assert all((tmp_path / f).is_file() for f in page.figures)
    bundles = [objs[0] for objs, kw in shown if kw.get("raw")]
    assert [b["text/plain"] for b in bundles] == ["Figure 1. A line (plane); 2 points, seed 0.",
                                                  "Figure 2. A line (curve); 2 points, seed 0."]
    assert all("text/markdown" not in b for b in bundles)   # the figure's cell is folded, not a prose cell
    assert "<strong>Figure 2.</strong>" in bundles[1]["text/html"]
    assert page.captions[page.figures[0]] == "A line (plane); 2 points, seed 0."


def test_show_refuses_a_missing_caption_and_a_name_twice(tmp_path, shown):
    page = Page("01_theory", tmp_path)
    fig = plt.figure()
    with pytest.raises(ValueError, match="caption"):
        page.show(fig, "x", "  ")
    page.show(fig, "x", "first")
    with pytest.raises(ValueError, match="already shown"):
        page.show(fig, "x", "second")
    assert page.figures == [f"{tmp_path.name}/01_theory_x.png"]
    plt.close("all")


def test_caption_markdown_is_rendered_and_escaped():
    html = caption_html(3, "recipe `{'l0_coeff': None}` with **bold** and cos > 0.95 <b>")
    assert html.startswith('<p class="atoms-caption"><strong>Figure 3.</strong> ')
    assert "<code>{'l0_coeff': None}</code>" in html and "<strong>bold</strong>" in html
    assert "cos &gt; 0.95 &lt;b&gt;" in html


def test_fmt_is_one_rule_three_significant_digits_and_thousands_separators():
    """Issue 32: one page printed 0.0007874, 0.004921, 1.587e+07, 30.98, 0.2748 and 1."""
    assert [fmt(v) for v in (0.0007874, 0.004921, 1.587e7, 30.98, 0.2748, 1.0)] == \
        ["0.000787", "0.00492", "15,900,000", "31", "0.275", "1"]
    assert [fmt(v) for v in (12345, np.int64(4096), 999.6, 1234.5, -0.0, 1.234e-5, np.float32(0.5))] == \
        ["12,345", "4,096", "1,000", "1,230", "0", "1.23e-05", "0.5"]
    assert (fmt(None), fmt(float("nan")), fmt(True), fmt("x")) == ("—", "nan", "True", "x")


def test_table_uses_the_books_number_format():
    df = pd.DataFrame({"a": [0.123456, np.float32(2.5)], "b": ["x", 3], "n": [12000, 7]})
    out = Page.table(df)
    assert out["a"].tolist() == [fmt(0.123456), fmt(2.5)] and out["b"].tolist() == ["x", "3"]
    assert out["n"].tolist() == ["12,000", "7"]           # counts with a thousands separator
    assert Page.table(df["a"])["a"].tolist() == ["0.123", "2.5"]   # a Series too
    assert Page.table(pd.DataFrame({"l": [[1.416992, 2], [3, 4000]]}))["l"].tolist() == ["[1.42, 2]", "[3, 4000]"]
    with pytest.raises(TypeError, match="DataFrame"):
        Page.table([{"a": 1}])
    # a row without a value for a column (None, or pandas's NaN) is an empty cell, never "nan" / "None"
    gaps = Page.table(pd.DataFrame([{"a": 0.5, "b": None}, {"a": float("nan"), "b": "x"}, {"a": np.float64("nan")}]))
    assert gaps["a"].tolist() == ["0.5", "—", "—"] and gaps["b"].tolist() == ["—", "x", "—"]


def test_table_drops_a_meaningless_index_and_keeps_a_meaningful_one():
    df = pd.DataFrame({"layer": [3, 15], "r2": [0.99123, 0.5]})
    html = Page.table(df)._repr_html_()
    assert "<th>0</th>" not in html and "<th>1</th>" not in html      # no row numbers
    assert "<td>0.991</td>" in html and ">layer</th>" in html
    assert not repr(Page.table(df)).lstrip().startswith("0")
    kept = Page.table(df.set_index("layer"))._repr_html_()
    assert "<th>15</th>" in kept and "<th>layer</th>" in kept
    plain = pd.DataFrame({"a": [0.5]})._repr_html_()               # what the old helper showed
    assert "<th>0</th>" in plain


def test_table_shows_every_row_and_all_of_a_long_cell():
    long = "a long statement of a claim " * 6
    df = pd.DataFrame({"claim": [f"c{i}" for i in range(80)], "text": [long] * 80})
    with pd.option_context("display.max_rows", 10, "display.max_colwidth", 20):
        html = Page.table(df)._repr_html_()
        text = repr(Page.table(df))
    assert html.count("<tr") == 81 and "c79" in html and "..." not in html
    assert long.strip() in html and "c79" in text and long.strip() in text


def test_table_columns_are_as_wide_as_their_text_up_to_the_wrap_width():
    from atomslib.book.tables import LETTER_WIDTH, WRAP_AT

    df = pd.DataFrame({"verdict": ["not supported", "supported"], "k": [1, 2], "note": ["word " * 20, ""]})
    html = Page.table(df)._repr_html_()
    assert f'style="min-width: {13 * LETTER_WIDTH:g}ch;">verdict</th>' in html   # "not supported" never breaks in two
    assert f'style="min-width: {LETTER_WIDTH:g}ch;">k</th>' in html
    assert f'style="min-width: {WRAP_AT * LETTER_WIDTH:g}ch;">note</th>' in html   # long text wraps at the wrap width


def test_claims_table_shows_no_row_numbers():
    from atomslib.book.results import claim, claims_table

    html = claims_table([claim("atoms.r2", 0.91234, "R2=euclid", "heldout")])._repr_html_()
    assert "<th>0</th>" not in html and "<td>0.912</td>" in html


def test_show_returns_nothing_so_a_cell_ending_in_it_prints_no_path(tmp_path, shown):
    page = Page("02_representation_shift", tmp_path)
    fig, ax = plt.subplots()
    assert page.show(fig, "histograms", "Angles; 2 points.") is None
    assert page.figure_path("histograms").is_file()
    plt.close("all")


def test_say_and_exercise_write_markdown(tmp_path, shown):
    page = Page("01_theory", tmp_path)
    page.say("one", "two")
    rec = page.exercise("Change H.", "H=16", "it changes")
    texts = [objs[0].data for objs, _ in shown]
    assert texts[0] == "one\n\ntwo"
    assert "atoms run 01_theory -p H=16" in texts[1] and "it changes" in texts[1]
    assert rec == {"run": "H=16", "expected": "it changes"}


def test_page_needs_a_notebook_name(tmp_path):
    with pytest.raises(ValueError, match="notebook's name"):
        Page("figures/x", tmp_path)
