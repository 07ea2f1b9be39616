"""scripts/book_time.py: the README's `make book` time comes from a measured run, never typed by hand."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import book_time  # noqa: E402

LOG = """>> installing the pinned CPU stack into .venv (2-3 minutes, once)
notebook                         status    seconds  key
----------------------------------------------------------------
01_theory                        ok           33.2  b943a425e4e7
03_neurons_features_atoms        ok          600.0  0123456789ab
08_identification                ok          480.5  ba9876543210
>> the book is at _build/book-default/_build/html/index.html
"""


@pytest.fixture()
def files(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{book_time.BEGIN}\nold\n{book_time.END}\n\nrest\n")
    monkeypatch.setattr(book_time, "README", readme)
    monkeypatch.setattr(book_time, "OUT", tmp_path / "book_time.json")
    return readme, tmp_path / "book_time.json"


def test_record_parses_the_summary_table_and_rewrites_only_the_marked_line(files):
    readme, out = files
    o = book_time.record(LOG, wall_s=1500.0, commit="abcdef0123456789", how="test")
    assert [r["notebook"] for r in o["notebooks"]] == ["01_theory", "03_neurons_features_atoms", "08_identification"]
    assert o["notebooks_s"] == pytest.approx(1113.7) and o["install_and_site_s"] == pytest.approx(386.3)
    assert o["within_budget"] and json.loads(out.read_text())["wall_s"] == 1500.0
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\nrest\n")
    assert "**`make book` took 25.0 minutes**" in text and "That is within the 30-minute budget" in text
    assert "03_neurons_features_atoms 10.0 min" in text and "abcdef0123" in text


def test_over_budget_or_a_failed_notebook_is_said_and_a_log_without_the_table_is_refused(files):
    readme, _ = files
    assert not book_time.record(LOG, wall_s=2000.0, commit="0" * 40, how="test")["within_budget"]
    assert "That is **over** the 30-minute budget" in readme.read_text()
    assert not book_time.record(LOG.replace("ok          600.0", "failed      600.0"), wall_s=100.0, commit="0" * 40,
                                how="test")["within_budget"]
    with pytest.raises(SystemExit, match="no `atoms run --all` summary table"):
        book_time.record("make: *** [book] Error 1\n", wall_s=10.0, commit="0" * 40, how="test")
