"""How a message names an option: the library's keyword (`resume=False`) in Python, the flag
(`--no-resume`) when an `atoms` command runs.

A message that tells the user what to pass writes `option("resume=False", "--no-resume")`; the
`atoms` command runs its subcommand inside `cli_wording()`, so that what it prints names its own
flags while the library API keeps its own words.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["option", "cli_wording", "in_cli"]

_CLI = contextvars.ContextVar("atoms_cli_wording", default=False)


def option(python: str, flag: str) -> str:
    """`flag` inside `cli_wording()` (an `atoms` command is running), else `python`."""
    return flag if _CLI.get() else python


def in_cli() -> bool:
    """Whether messages are being written for an `atoms` command."""
    return _CLI.get()


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Messages raised in this block name CLI flags (`option`)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)
