"""atomslib.book.page: one executed notebook as a web page in the book's style (atoms page, atoms run --html).

The end-to-end test runs chapter 1 on the quick profile with another H (about a minute) and builds its
page with Jupyter Book (about 15 s): offline math, the citations, the book's CSS, nothing remote.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from atomslib import cli
from atomslib.book import page as pg

REPO = Path(__file__).resolve().parents[1]
TITLES = {"book/generated/01_theory": "Theory, checked", "book/generated/08_identification": "Do TSAEs find atoms?",
          "book/generated/06_conclusions": "Conclusions", "book/theory": "Definitions"}


def test_references_to_other_chapters_become_their_titles():
    text = ("see {doc}`08_identification`, {doc}`the definitions <../theory>`, the [conclusions](06_conclusions) "
            "and [its rows](06_conclusions.ipynb#rows); kept: {doc}`01_theory`, [a section](#below), "
            "[the paper](https://arxiv.org/abs/2509.20784), ![a figure](figures/x.png), {doc}`unknown`")
    got = pg.unlink_other_chapters(text, "book/generated/01_theory", TITLES)
    assert got == ("see *Do TSAEs find atoms?*, *the definitions*, the conclusions and its rows; kept: "
                   "{doc}`01_theory`, [a section](#below), [the paper](https://arxiv.org/abs/2509.20784), "
                   "![a figure](figures/x.png), {doc}`unknown`")


def test_the_books_titles_come_from_the_toc_and_headings():
    titles = pg.chapter_titles(pg.find_project(REPO))
    assert titles["book/generated/08_identification"] == "Do trained TSAEs find the atoms?"   # the toc's title
    assert titles["book/theory"].strip()                                                     # the page's heading


def test_remote_scripts_and_stylesheets_are_found():
    html = ('<script src="_static/mathjax/tex-chtml.js"></script><script>const U = "https://unpkg.com/x.js"</script>'
            '<script src="https://cdn.example/require.js"></script><link rel="stylesheet" href="//fonts.example/a.css">'
            '<link rel="stylesheet" href="_static/atoms.css"><a href="https://arxiv.org/abs/2509.20784">paper</a>')
    assert pg.remote_assets(html) == ["https://cdn.example/require.js", "//fonts.example/a.css"]


def _executed(params: dict, cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["atoms"] = {"params": params, "atomslib_version": "0.1.0"}
    nb.metadata["papermill"] = {"end_time": "2026-12-02T15:44:14.44+00:00"}
    return nb


def test_the_page_says_how_it_ran_and_lists_its_references():
    params = nbformat.v4.new_code_cell('H = 64  # atoms\nprofile = "default"\nresults_dir = "results"\nseed = 0\n',
                                       metadata={"tags": ["parameters"]})
    nb = _executed({"H": 16, "profile": "quick", "results_dir": "/tmp/x/results", "seed": 0},
                   [nbformat.v4.new_markdown_cell("# Theory\n\nAs {cite}`hu2025atoms` says, see {doc}`08_identification`."),
                    params])
    got = pg.page_notebook(nb, "book/generated/01_theory", TITLES)
    title, note = got.cells[0].source.split("\n\n", 2)[:2]
    assert title == "# Theory" and note.startswith("```{note}\nExecuted by `atoms run` on the profile `quick`, "
                                                   "2026-12-02 15:44 UTC, atomslib 0.1.0.")
    assert "other than the notebook's defaults: `H=16` (the notebook's default: `64`)." in note   # not seed, not paths
    assert "*Do TSAEs find atoms?*" in got.cells[0].source
    assert "```{bibliography}" in got.cells[-1].source
    assert nb.cells[0].source.startswith("# Theory\n\nAs")           # the executed notebook itself is untouched


def test_page_errors_name_the_fix(tmp_path, capsys):
    assert cli.main(["page", "01_theory", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no executed notebook at {tmp_path / '01_theory.ipynb'}: run `atoms run 01_theory` first" in err
    placeholder = tmp_path / "03_planned.ipynb"
    nbformat.write(_executed({}, []), placeholder)
    nb = json.loads(placeholder.read_text())
    nb["metadata"]["atoms"] = {"placeholder": True}
    placeholder.write_text(json.dumps(nb))
    assert cli.main(["page", str(placeholder)]) == 2
    assert "is a placeholder page" in capsys.readouterr().err


@pytest.mark.book
def test_a_teachers_run_of_chapter_1_renders_as_one_offline_page(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["run", "01_theory", "--profile", "quick", "-p", "H=16", "--out", str(out), "--html"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    page = Path(printed.strip().splitlines()[-1].strip())
    assert page == out / "html" / "01_theory" / "01_theory.html" and page.is_file()
    html = page.read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))
    # the run it shows: the note, and the chapter's own sentence at H = 16 (the profile's H is 24)
    assert "Executed by atoms run on the profile quick" in text and "H=16 (the notebook’s default: 64)" in text
    assert re.search(r"\bH = 16, N = \d+, Welch bound", text), "the page does not show the run at H = 16"
    # offline math: MathJax from the page's own _static, and math on the page for it to typeset
    assert '<script defer="defer" src="_static/mathjax/tex-chtml.js"></script>' in html
    assert (page.parent / "_static" / "mathjax" / "tex-chtml.js").is_file() and r"\(" in html
    # citations resolve to a references list on the page; other chapters are named, not broken links
    assert 'id="references"' in html and "Tropp" in text and "[CandesT05" in text
    assert 'href="#06_conclusions"' not in html
    # the book's styling: its theme and the project's own CSS
    assert "_static/styles/sphinx-book-theme.css" in html and (page.parent / "_static" / "atoms.css").is_file()
    assert pg.remote_assets(html) == []
    assert not list((out / "html").glob(".01_theory.build-*"))        # the build folder is gone
    # again through `atoms page`, from what is on disk: the same page, replaced in place
    assert cli.main(["page", "01_theory", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(page) and page.is_file()
