"""argparse `type=` functions for the `atoms` commands: a value that would be read as "not set"
(0 for a count, "" for a path or a name) is an error naming the option, never a silent default."""
from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "positive_float", "non_empty"]


def positive_int(s: str) -> int:
    """An integer >= 1 (a count: units, tokens, a batch size)."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer; pass a whole number >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a count >= 1; pass a whole number >= 1, or leave the option "
                                         f"out for its default")
    return n


def positive_float(s: str) -> float:
    """A finite number > 0."""
    try:
        x = float(s)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"{s!r} is not a number > 0; pass e.g. 2, or leave the option out for its "
                                         f"default")
    return x


def non_empty(s: str) -> str:
    """A path or a name that is not empty (an empty --out would mean the current folder)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("an empty value; pass a path or a name, or leave the option out for its "
                                         "default")
    return s
