"""The hostile audit's manifest edit, shared by tests/test_cache.py and tests/test_harvest.py."""
from __future__ import annotations

import json
from pathlib import Path


def drop_last_shard_consistently(folder: Path, *, edit_request: bool = False) -> dict:
    """Drop the last shard entry of `folder`'s manifest and set n_shards, n_contexts, n_tokens and counts to
    match (and, with `edit_request`, the request's tokens too), so that the manifest agrees with itself;
    return the edited manifest."""
    mf = Path(folder) / "manifest.json"
    m = json.loads(mf.read_text())
    gone = m["shards"].pop()
    m["n_shards"] -= 1
    m["n_contexts"] -= gone["n_contexts"]
    m["n_tokens"] = m["n_contexts"] * m["ctx_len"]
    for layer, c in m["counts"].items():
        c["n_kept"] -= gone["n_kept"][layer]
        c["n_outlier"] -= gone["n_outlier"][layer]
        c["n_first"] -= gone["n_contexts"]
    if edit_request:
        m["request"]["tokens"] = m["n_tokens"]
    mf.write_text(json.dumps(m))
    return m
