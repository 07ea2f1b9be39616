"""scripts/check_site.py's own checks, on small synthetic pages: stray reprs in cell outputs, numbers
outside the book's format in the display helper's tables, and (in headless Chromium) a squeezed
table column. The whole book goes through the same checks in tests/test_book.py."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from atomslib._util import fmt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import check_site  # noqa: E402


def _page(body: str) -> str:
    return (f'<html><head><meta charset="utf-8"><title>t</title></head><body><main><article class="bd-article">'
            f'{body}</article></main></body></html>')


def _cell(source: str, output: str) -> str:
    return (f'<div class="cell docutils container"><div class="cell_input docutils container"><pre>{source}</pre></div>'
            f'<div class="cell_output docutils container"><div class="output text_plain highlight-myst-ansi">'
            f'<pre><span></span>{output}</pre></div></div></div>')


def test_stray_outputs_finds_reprs_under_a_cell_and_nothing_in_code_or_prose():
    page = _page(_cell("page.show(fig, 'h', 'caption')",
                       "PosixPath(&#39;models/gemma3-270m/figures/02_representation_shift_histograms.png&#39;)")
                 + _cell("plt.plot(x)", "&lt;Figure size 640x480 with 1 Axes&gt;")
                 + _cell("ax", "&lt;Axes: xlabel=&#39;layer&#39;&gt;")
                 + _cell("obj", "&lt;atomslib.book.display.Thing object at 0x7f3a2c1d9e50&gt;"))
    found = check_site.stray_outputs(page)
    assert any(f.startswith("PosixPath('models/gemma3-270m") for f in found), found
    assert any(f.startswith("<Figure size 640x480") for f in found), found
    assert any(f.startswith("<Axes: xlabel") for f in found), found
    assert any("object at 0x7f3a2c1d9e50" in f for f in found), found
    clean = _page("<p>We call <code>Path('x')</code> in prose.</p>" + _cell("p = Path('x')\np", "12.5")
                  + _cell("print(1)", "results files read: 01_theory"))
    assert check_site.stray_outputs(clean) == []


def test_unformatted_numbers_flags_the_issues_examples_in_the_helpers_tables_only():
    cells = ["0.2748", "1.587e+07", "12345", "0.0007874", "0.000787", "15,900,000", "31", "1e-05", "layer 3", "—",
             "-0.5", "1,230", "0.99"]
    table = ('<table class="dataframe atoms-table"><tbody><tr>' + "".join(f"<td>{c}</td>" for c in cells)
             + "</tr></tbody></table>")
    other = '<table class="dataframe"><tbody><tr><td>0.2748</td></tr></tbody></table>'
    assert check_site.unformatted_numbers(_page(table + other)) == ["0.2748", "1.587e+07", "12345", "0.0007874"]


def test_every_number_fmt_writes_passes_the_format_check():
    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-7, 12) for _ in range(2000)] + \
             [rng.randint(-10**7, 10**7) for _ in range(200)] + [0.0, 1.0, 999.6, 1e-4, 0.00099996]
    table = ('<table class="atoms-table"><tbody><tr>' + "".join(f"<td>{fmt(v)}</td>" for v in values)
             + "</tr></tbody></table>")
    assert check_site.unformatted_numbers(_page(table)) == []


# A row of book/reliability.md as Sphinx renders it (a literal's words in span.pre, kept on one line)
SQUEEZED = """<style>article{width:640px;font:16px sans-serif} td{border:1px solid #999;padding:4px}
span.pre{white-space:nowrap}</style>
<table class="table"><thead><tr><th>fault</th><th>what the project guarantees</th><th>checked by</th></tr></thead>
<tbody><tr><td>kill -9 during a training</td>
<td>The last checkpoint is whole. Resuming ends with bit-identical weights and the same training log.</td>
<td><p><code class="docutils literal notranslate"><span class="pre">tests/test_train.py::test_cli_train_into_a_folder_in_use_is_refused_and_a_dead_holders_lock_taken_over</span></code></p></td>
</tr></tbody></table>"""


def _chromium_or_skip():
    if os.environ.get("ATOMS_SKIP_BROWSER") == "1":
        pytest.skip("ATOMS_SKIP_BROWSER=1: the browser check was skipped on purpose")
    if check_site.find_chromium() is None:   # as in test_book: `make test` installs it (scripts/ensure-chromium.sh)
        pytest.fail("no headless Chromium: apt-get install chromium, or set ATOMS_SKIP_BROWSER=1 to skip on purpose")


def test_the_site_check_fails_on_a_squeezed_column_and_passes_a_wrapped_one(tmp_path):
    _chromium_or_skip()
    (tmp_path / "squeezed.html").write_text(_page(SQUEEZED))
    # with the book's stylesheet: long code names wrap (_static/atoms.css), so no column is squeezed
    (tmp_path / "atoms.css").write_text((REPO / "_static" / "atoms.css").read_text())
    (tmp_path / "wrapped.html").write_text(_page('<link rel="stylesheet" href="atoms.css">' + SQUEEZED))
    report = check_site.check_site(tmp_path, pages=["squeezed.html", "wrapped.html"], budget_ms=3000)
    pages = {p["page"]: p for p in report["pages"]}
    assert pages["squeezed.html"]["squeezed"], pages["squeezed.html"]
    assert "column 2" in pages["squeezed.html"]["squeezed"][0]
    assert any("squeezed table column" in p for p in report["problems"])
    assert pages["wrapped.html"]["squeezed"] == [], pages["wrapped.html"]


def test_the_verdict_matrix_health_notes_may_wrap_under_their_number(tmp_path):
    """The verdict matrix's health notes (`.v-health`) wrap by design, so that every model's column fits the page;
    any other text that wraps in so narrow a column is still squeezed (the test above)."""
    _chromium_or_skip()
    (tmp_path / "atoms.css").write_text((REPO / "_static" / "atoms.css").read_text())

    def table(number):   # four cells in 26em: each about 8 characters wide, so the notes wrap
        cell = (f'<td><span class="v-number">{number}</span> <span class="v-mark">✗</span><br>'
                '<span class="v-health v-unhealthy">some SAEs unhealthy</span></td>')
        return ('<link rel="stylesheet" href="atoms.css"><div class="atoms-verdicts-wrap" style="width:26em">'
                '<table class="atoms-verdicts"><tbody><tr><th>a claim</th>' + cell * 4 + '</tr></tbody></table></div>')

    (tmp_path / "notes.html").write_text(_page(table("0.901")))
    report = check_site.check_site(tmp_path, pages=["notes.html"], budget_ms=3000)
    pages = {p["page"]: p for p in report["pages"]}
    assert pages["notes.html"]["squeezed"] == [], pages["notes.html"]


def test_the_site_check_fails_on_a_stray_repr(tmp_path):
    _chromium_or_skip()
    (tmp_path / "stray.html").write_text(_page(_cell("page.show(fig)", "PosixPath(&#39;figures/x.png&#39;)")))
    report = check_site.check_site(tmp_path, pages=["stray.html"], budget_ms=2000)
    assert any("stray output" in p and "PosixPath" in p for p in report["problems"]), report["problems"]
