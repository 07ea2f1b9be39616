"""atomslib.interpret: streamed top-k against brute force, the entropy proxy, sampling (fast, synthetic)."""
from __future__ import annotations

import math

import pytest
import torch

from atomslib import interpret as it


def _batches(X, b):
    return [X[i:i + b] for i in range(0, X.shape[0], b)]


@pytest.mark.parametrize("score", ["value", "abs"])
@pytest.mark.parametrize("b", [1, 7, 64])
def test_topk_matches_brute_force(score, b):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=g)
    W = torch.randn(6, 9, generator=g)
    enc = lambda x: torch.relu(x @ W) if score == "value" else x @ W  # noqa: E731
    Z = enc(X)
    top = it.topk_activations(_batches(X, b), enc, k=5, score=score)
    s = Z.abs() if score == "abs" else Z.masked_fill(Z <= 0, -math.inf)
    ref = s.T.topk(5, dim=1)
    assert top.n_rows == 50
    assert torch.allclose(top.scores, ref.values)
    filled = top.valid
    assert torch.equal(top.rows[filled], ref.indices[filled])
    assert torch.allclose(top.values, torch.where(filled, Z.T.gather(1, top.rows.clamp_min(0)), torch.zeros(())))
    assert torch.equal(top.n_active, (Z.abs() > 0).sum(0))
    assert torch.allclose(top.max_abs, Z.abs().amax(0))


def test_topk_unfilled_slots_ties_and_dead_units():
    X = torch.tensor([[1.0], [0.0], [1.0], [2.0]])
    enc = lambda x: torch.cat([x, torch.zeros_like(x), -x], 1)  # noqa: E731  unit 1 dead, unit 2 negative
    top = it.topk_activations(_batches(X, 3), enc, k=4)
    assert top.rows[0].tolist() == [3, 0, 2, -1]   # tie 1.0 at rows 0 and 2: the earlier row first; row 1 inactive
    assert top.values[0].tolist() == [2.0, 1.0, 1.0, 0.0]
    assert top.rows[1].tolist() == [-1] * 4 and top.n_active[1] == 0
    assert top.valid[2].sum() == 3 and top.values[2, 0] == -1.0   # active but negative: ranked by value
    top_abs = it.topk_activations(_batches(X, 3), enc, k=1, score="abs")
    assert top_abs.values[2].tolist() == [-2.0] and top_abs.rows[2].tolist() == [3]
    assert torch.allclose(top.frequency, torch.tensor([0.75, 0.0, 0.75], dtype=torch.float64))


def test_topk_rejects_bad_input():
    X = torch.randn(4, 2)
    with pytest.raises(ValueError, match="k must"):
        it.topk_activations([X], lambda x: x, k=0)
    with pytest.raises(ValueError, match="score"):
        it.topk_activations([X], lambda x: x, k=1, score="max")
    with pytest.raises(ValueError, match=r"\(b, U\)"):
        it.topk_activations([X], lambda x: x[0], k=1)
    with pytest.raises(ValueError, match="nothing"):
        it.topk_activations([], lambda x: x, k=1)


def test_token_entropy_and_distinct_fraction():
    ids = torch.tensor([[5, 5, 5, 5], [1, 2, 3, 4], [1, 1, 2, 2], [7, 8, 9, 9]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    h = it.token_entropy(ids, valid)
    assert h.tolist() == pytest.approx([0.0, 2.0, 1.0, 1.0])
    d = it.distinct_fraction(ids, valid)
    assert d.tolist() == pytest.approx([0.25, 1.0, 0.5, 1.0])
    assert it.top_token_share(ids, valid).tolist() == pytest.approx([1.0, 0.25, 0.5, 0.5])
    none = it.token_entropy(ids[:1], torch.zeros(1, 4, dtype=torch.bool))
    assert math.isnan(none.item())
    with pytest.raises(ValueError, match="shape of ids"):
        it.token_entropy(ids, valid[:, :2])


def test_sampling_is_deterministic_and_skips_ineligible():
    eligible = torch.tensor([i % 3 != 0 for i in range(30)])
    a = it.sample_units(eligible, 5, seed=1)
    assert torch.equal(a, it.sample_units(eligible, 5, seed=1))
    assert eligible[a].all() and len(set(a.tolist())) == 5 and a.tolist() == sorted(a.tolist())
    assert torch.equal(it.sample_units(eligible, 100), torch.nonzero(eligible).flatten())
    r = it.random_rows_baseline(20, 3, 4, seed=0)
    assert r.shape == (3, 4) and all(len(set(row.tolist())) == 4 for row in r)


def test_mark_context():
    assert it.mark_context(["a", " b", "\n"], 1) == "a⟦ b⟧⏎"


def test_unit_activations_are_the_chosen_columns_in_stream_order():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(23, 4, generator=g)
    W = torch.randn(4, 6, generator=g)
    enc = lambda x: torch.relu(x @ W)  # noqa: E731
    got = it.unit_activations(_batches(X, 5), enc, torch.tensor([4, 0, 4]))
    assert got.shape == (23, 3) and got.dtype == torch.float32
    assert torch.allclose(got, enc(X)[:, [4, 0, 4]])
    with pytest.raises(ValueError, match="units must lie"):
        it.unit_activations(_batches(X, 5), enc, [6])
    with pytest.raises(ValueError, match="nothing"):
        it.unit_activations([], enc, [0])
