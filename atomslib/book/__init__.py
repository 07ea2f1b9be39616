"""The book wing: what the chapter notebooks share to show their results (figures, tables, prose,
chapter 1's sentences from its results, `atomslib.book.theory_prose`, and chapter 5's atom
browser, `atomslib.book.browser`).

It may import the library; the library proper never imports it (tests/test_notebook_layout.py).
Nothing of a chapter's story lives here: the notebooks keep their sentences, this only puts them
on the page.
"""
from __future__ import annotations

from .display import Page, caption_html
from .findings import FINDINGS_FILE, claims_markdown, findings_markdown, not_run_markdown
from .verdicts import verdict_matrix_html

__all__ = ["Page", "caption_html", "FINDINGS_FILE", "claims_markdown", "findings_markdown", "not_run_markdown",
           "verdict_matrix_html"]
