"""book/reliability.md ("What survives what"): every fault the project makes a promise about has a row,
and every test a row names exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "reliability.md"
FAULTS = ("kill -9", "SIGINT", "ENOSPC", "concurrent run", "corrupt shard", "edited manifest", "cache in use by a reader",
          "manifest edited to agree with itself", "0 or an empty value")


def rows() -> list[list[str]]:
    lines = [ln for ln in PAGE.read_text().splitlines() if ln.startswith("|")]
    assert lines[0].split("|")[1:4] == [" fault ", " what the project guarantees ", " checked by "]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_every_fault_has_a_row_backed_by_tests():
    table = rows()
    assert all(len(r) == 3 for r in table)
    for fault in FAULTS:
        row = next((r for r in table if fault in r[0]), None)
        assert row is not None, f"no row for {fault!r}"
        assert re.search(r"tests/test_\w+\.py::test_\w+", row[2]), f"the row for {fault!r} names no test"


def test_every_test_named_exists():
    named = re.findall(r"(tests/test_\w+\.py)::(test_\w+)", PAGE.read_text())
    assert len(named) >= len(FAULTS)
    defined: dict[str, set[str]] = {}
    for path, name in named:
        if path not in defined:
            tree = ast.parse((ROOT / path).read_text())
            defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined[path], f"{path}::{name} is named on {PAGE.name} but does not exist"


def test_page_is_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = re.findall(r"'file': '([^']+)'", str(toc))
    assert "book/reliability" in files
