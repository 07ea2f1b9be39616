"""One `Page` per chapter notebook: figures saved beside the results and captioned, tables in the
book's number format, prose written from the results.

    page = Page("03_neurons_features_atoms", figures_dir)
    page.show(fig, "r2_q_plane", f"... {len(layers)} layers of {model} ...")   # figures/03_..._r2_q_plane.png
    page.table(df)                                                           # numbers as fmt writes them
    page.say(f"The atoms reach R² = {results.fmt(r2)} ...")                  # Markdown built from results
    results.save_results("03_neurons_features_atoms", PARAMS, metrics, claims, figures=page.figures)

A caption is shown as HTML (`text/html`, plain text beside it), not as Markdown: the cell that
plots a figure is folded (`hide-input`), and a Markdown output is reserved for the prose cells
whose code the reader never sees (`remove-input`; tests/test_theory_chapter.py checks that).
Captions may use inline Markdown (`code`, **bold**, *italic*) but no math: write μ, R², ≤ as
Unicode.
"""
from __future__ import annotations

import html
from pathlib import Path

from .tables import Table, book_table

FIGURE_DPI = 110   # the saved PNG's resolution (the page shows the inline copy)


def caption_html(number: int, caption: str) -> str:
    """The HTML of a numbered caption: "<b>Figure n.</b> caption", inline Markdown rendered."""
    return (f'<p class="atoms-caption"><strong>Figure {number}.</strong> {_inline_markdown(caption)}</p>')


def _inline_markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:   # the book's environment has it (myst-parser); a bare kernel gets escaped text
        return html.escape(text)
    return MarkdownIt("commonmark", {"html": False}).renderInline(text)   # raw HTML is escaped


class Page:
    """The display helpers of one chapter notebook (create it once, after the parameters).

    `name` is the notebook's name (`03_neurons_features_atoms`): a figure `x` is saved as
    `<figures_dir>/<name>_x.png` and listed in `figures` as `<basename of figures_dir>/<name>_x.png`,
    the form `run.save_results(..., figures=page.figures)` records.
    """

    def __init__(self, name: str, figures_dir: str | Path, *, dpi: int = FIGURE_DPI):
        if not name or "/" in name:
            raise ValueError(f"Page(name={name!r}): give the notebook's name, e.g. '03_neurons_features_atoms'")
        self.name = name
        self.figures_dir = Path(figures_dir)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.dpi = dpi
        self.figures: list[str] = []            # as save_results records them
        self.captions: dict[str, str] = {}      # figure entry -> its caption

    def __repr__(self) -> str:
        return f"Page({self.name!r}, {str(self.figures_dir)!r}, {len(self.figures)} figures)"

    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{self.name}_{name}.png"

    def show(self, fig, name: str, caption: str) -> None:
        """Save `fig` beside the results, show it, and print its numbered caption below it.

        The caption says what the figure shows and which parameters made it (write it from the
        notebook's variables, never typed numbers). Returns None, so that a cell ending in
        `page.show(...)` prints nothing under the figure (the saved file is `page.figure_path(name)`)."""
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"Page.show({name!r}): every figure needs a caption saying what it shows and "
                             "which parameters made it")
        path = self.figure_path(name)
        entry = f"{self.figures_dir.name}/{path.name}"
        if entry in self.figures:
            raise ValueError(f"Page.show: a figure named {name!r} was already shown on this page "
                             f"({path.name} would be overwritten); give each figure its own name")
        fig.savefig(path, dpi=self.dpi, bbox_inches="tight")
        self.figures.append(entry)
        self.captions[entry] = caption
        import matplotlib.pyplot as plt
        from IPython.display import display

        plt.show()
        number = len(self.figures)
        display({"text/html": caption_html(number, caption), "text/plain": f"Figure {number}. {caption}"},
                raw=True)

    @staticmethod
    def table(df) -> Table:
        """`df` as the book shows tables (`atomslib.book.tables`): every number written by `fmt`, every
        row shown, no index column when the index is pandas's row number (0, 1, 2 ...). Display it by
        leaving it last in the cell (or `display(page.table(df))`)."""
        return book_table(df)

    @staticmethod
    def say(*paragraphs: str) -> None:
        """Prose built from the results, shown as Markdown (one paragraph per argument). Its cell is
        tagged `remove-input`: the reader sees the text, not the code that wrote it."""
        from IPython.display import Markdown, display

        display(Markdown("\n\n".join(paragraphs)))

    def exercise(self, task: str, assignment: str, expected: str) -> dict[str, str]:
        """An exercise admonition: what to change (`-p assignment`) and the outcome this notebook
        computed for that value. Returns the record to keep in the results' metrics."""
        self.say(f"```{{admonition}} Exercise\n{task} Run `atoms run {self.name} -p {assignment}`.\n\n"
                 f"*Expected (computed by this run with that value):* {expected}\n```")
        return {"run": assignment, "expected": expected}

