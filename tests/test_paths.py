"""atomslib.paths: one cache root, one environment variable; the book's old variable still read, with a warning."""
from __future__ import annotations

from pathlib import Path

import pytest

from atomslib import paths


def test_one_root_holds_models_harvests_and_the_books_store(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.LEGACY_BOOK_CACHE_ENV, raising=False)
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "root"))
    assert paths.cache_root() == tmp_path / "root"
    assert paths.book_cache() == tmp_path / "root" / "book"
    assert paths.book_cache(tmp_path / "mine") == tmp_path / "mine"      # an explicit cache_dir wins
    monkeypatch.delenv(paths.CACHE_ENV)
    assert paths.cache_root() == Path.home() / ".cache" / "atoms"


def test_the_books_old_variable_is_read_with_a_warning_that_names_the_new_one(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.LEGACY_BOOK_CACHE_ENV, str(tmp_path / "old"))
    with pytest.warns(FutureWarning, match=r"\$ATOMS_CACHE_DIR is deprecated: set \$ATOMS_CACHE"):
        assert paths.book_cache() == tmp_path / "old"


def test_the_library_reads_the_root_from_one_place():
    """No module but paths.py reads the cache variables itself."""
    root = Path(paths.__file__).parent
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if p.name != "paths.py" and ('"ATOMS_CACHE' in p.read_text() or "'ATOMS_CACHE" in p.read_text()))
    assert not readers, f"these modules read $ATOMS_CACHE* themselves; use atomslib.paths: {readers}"
