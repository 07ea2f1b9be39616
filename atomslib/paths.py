"""Where atomslib keeps what it can make again: one root, named by one environment variable.

``$ATOMS_CACHE`` (default ``~/.cache/atoms``) holds

- ``models/<name>/``: the embedded models converted once to safetensors (`assets.embedded_folder`);
- ``harvests/<hash>/``: `atoms harvest` / `harvest()` without an output folder;
- ``book/``: the activation caches (``acts/``) and trained units (``units/``) that the book's
  notebooks share, for a profile's ``cache_dir: null`` (`book_cache`).

Everything under it is keyed by what made it and validated when read, so two checkouts or two
profiles may share it. ``$ATOMS_CACHE_DIR``, the book's own variable before there was one root, is
still read for the book's folder (with a warning that names the new variable).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

CACHE_ENV = "ATOMS_CACHE"
LEGACY_BOOK_CACHE_ENV = "ATOMS_CACHE_DIR"   # deprecated: documented before one root existed


def cache_root() -> Path:
    """The root of every atomslib cache: ``$ATOMS_CACHE`` if set, else ``~/.cache/atoms``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "atoms").expanduser()


def book_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder the book's notebooks share activations and units in: `cache_dir` when given,
    else ``$ATOMS_CACHE/book`` (``$ATOMS_CACHE_DIR``, deprecated, still wins when set)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    legacy = os.environ.get(LEGACY_BOOK_CACHE_ENV)
    if legacy:
        warnings.warn(f"${LEGACY_BOOK_CACHE_ENV} is deprecated: set ${CACHE_ENV} (the one cache root; the book "
                      f"uses $ATOMS_CACHE/book) or pass -p cache_dir=...", FutureWarning, stacklevel=2)
        return Path(legacy).expanduser()
    return cache_root() / "book"
