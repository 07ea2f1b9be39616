"""Helpers of the book's notebooks (not part of the library: nothing in atomslib imports them)."""
