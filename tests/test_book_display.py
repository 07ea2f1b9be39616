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


def test_table_uses_the_books_number_format():
    df = pd.DataFrame({"a": [0.123456, np.float32(2.5)], "b": ["x", 3]})
    out = Page.table(df)
    assert out["a"].tolist() == [fmt(0.123456), fmt(2.5)] and out["b"].tolist() == ["x", 3]


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
