"""The book's tables: every number in the one format (`fmt`), every row shown, no meaningless index.

`Page.table(df)` (and `results.claims_table`) return a `Table`: a pandas DataFrame whose cells hold
the numbers as `fmt` writes them (floats to 3 significant digits, counts with thousands separators)
and which displays

- without its index when that is the default `RangeIndex` (0, 1, 2 ...: a row number, not data);
  an index a notebook set on purpose (`set_index("layer")`) is kept;
- with every row and every character of every cell (pandas would elide rows past
  `display.max_rows` with `...` and cut long text at `display.max_colwidth`);
- with each column at least as wide as its longest text, up to `WRAP_AT` characters (longer text
  wraps there): the browser never squeezes a column to one word per line, a table too wide for the
  page scrolls instead (`_static/atoms.css`; scripts/check_site.py flags a squeezed column).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .._util import fmt

WRAP_AT = 22   # characters: a column is never narrower than its text up to this many characters
LETTER_WIDTH = 1.2   # a character of text in `ch` (proportional fonts: "m" and capitals are wider than "0")


def is_row_number(index: pd.Index) -> bool:
    """True for an unnamed RangeIndex 0, 1, 2 ... (the index pandas gives a table nobody indexed)."""
    return (isinstance(index, pd.RangeIndex) and index.name is None and index.start == 0 and index.step == 1)


class Table(pd.DataFrame):
    """A DataFrame shown as the book shows tables (see the module docstring)."""

    @property
    def _constructor(self):
        return Table

    def shows_index(self) -> bool:
        return not is_row_number(self.index)

    def min_widths(self) -> list[str]:
        """Each column's CSS min-width: its longest text (header included), at most WRAP_AT characters, in
        `ch` (the width of a "0") with room for letters wider than a digit (m, w, capitals)."""
        heads = [c[-1] if isinstance(c, tuple) else c for c in self.columns]   # a MultiIndex column: its last level
        chars = [min(WRAP_AT, max([len(str(heads[j]))] + [len(str(v)) for v in self.iloc[:, j]]))
                 for j in range(self.shape[1])]
        return [f"{round(LETTER_WIDTH * n, 1):g}ch" for n in chars]

    def _repr_html_(self) -> str:
        return self.to_html(index=self.shows_index(), max_rows=None, max_cols=None, border=0, escape=True,
                            classes="atoms-table", col_space=self.min_widths(), justify="left")

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None):
            return self.to_string(index=self.shows_index(), max_rows=None, max_cols=None)


MISSING = "—"   # an empty cell: None, or the NaN pandas puts where a row has no value for a column


def cell(value: Any) -> Any:
    """One cell as the book writes it: a number through `fmt`, a missing value (None or NaN: in a table
    a NaN is a row without that column, e.g. SAELens keeps no training log) as MISSING, anything else
    as it is."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:   # numpy scalars
        value = value.item()
    if isinstance(value, float) and value != value:
        return MISSING
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value):
        # a list of numbers: its floats in the book's format; its integers bare (a thousands separator would
        # read as a list separator)
        return "[" + ", ".join(str(v) if isinstance(v, int) else fmt(v) for v in value) + "]"
    return fmt(value) if isinstance(value, (int, float)) else value


def book_table(df: pd.DataFrame | pd.Series) -> Table:
    """`df` with its number cells (and number index or column labels) written by `fmt`, as a `Table`."""
    if isinstance(df, pd.Series):
        df = df.to_frame()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"Page.table needs a pandas DataFrame or Series, got {type(df).__name__}; "
                        "wrap rows in pd.DataFrame(rows) first")
    out = Table(df.astype(object).map(cell))
    if not is_row_number(df.index):
        out.index = _labels(df.index)
    out.columns = _labels(df.columns)
    return out


def _labels(index: pd.Index) -> pd.Index:
    """Index or column labels with their numbers written by `fmt` (levels of a MultiIndex too)."""
    if isinstance(index, pd.MultiIndex):
        return index.set_levels([_labels(level) for level in index.levels], verify_integrity=False)
    if index.dtype.kind in "fiu" or index.dtype == object:
        return pd.Index([cell(v) for v in index], name=index.name, dtype=object)
    return index
