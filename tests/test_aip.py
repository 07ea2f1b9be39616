"""AIP and MomentAccumulator: streaming moments, invariance, whitening, ridge, persistence, errors."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from atomslib.aip import AIP, MomentAccumulator, centered_cosine_matrix
from atomslib._util import atomic_save_safetensors, torch_threads

f64 = torch.float64


def _random_map(H, g, cond=30.0):
    """A random invertible H x H matrix with condition number `cond` (mixes and stretches axes)."""
    Q1, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=f64))
    Q2, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=f64))
    return Q1 @ torch.diag(torch.logspace(0, math.log10(cond), H, dtype=f64)) @ Q2


def _euclid_cos(u, v):
    return torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=-1)


# ---- MomentAccumulator ------------------------------------------------------------------------
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), seed=st.integers(0, 10_000))
def test_streaming_moment_equals_direct(sizes, seed, make_acts):
    x = make_acts(sum(sizes) + 3, 5, seed=seed)
    acc = MomentAccumulator(5)
    fed, i = [], 0
    for k, s in enumerate(sizes + [3]):
        b = x[i:i + s].float() if k % 2 else x[i:i + s]     # mixed dtypes, empty batches allowed
        acc.update(b)
        fed.append(b.double())
        i += s
    xd = torch.cat(fed)
    assert acc.n == x.shape[0]
    torch.testing.assert_close(acc.moment(), xd.T @ xd / x.shape[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.mean(), xd.mean(0), rtol=1e-12, atol=1e-12)
    assert torch.equal(acc.moment(), acc.moment().T)


def test_half_precision_is_upcast(make_acts):
    x = make_acts(300, 6).half()
    acc = MomentAccumulator(6)
    acc.update(x)
    xd = x.double()
    torch.testing.assert_close(acc.moment(), xd.T @ xd / 300, rtol=1e-12, atol=1e-12)


def test_state_dict_resume_and_merge(make_acts, tmp_path):
    x = make_acts(500, 7, seed=3)
    full = MomentAccumulator(7)
    full.update(x)
    a = MomentAccumulator(7)
    a.update(x[:200])
    atomic_save_safetensors(tmp_path / "m.safetensors", a.state_dict())
    from safetensors.torch import load_file
    b = MomentAccumulator(7).load_state_dict(load_file(tmp_path / "m.safetensors"))
    b.update(x[200:])
    assert b.n == 500
    torch.testing.assert_close(b.moment(), full.moment(), rtol=1e-12, atol=1e-12)
    c, d = MomentAccumulator(7), MomentAccumulator(7)
    c.update(x[:123])
    d.update(x[123:])
    torch.testing.assert_close(c.merge(d).moment(), full.moment(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="H = 8"):
        MomentAccumulator(8).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="missing"):
        MomentAccumulator(7).load_state_dict({"sum_HH": torch.zeros(7, 7)})


def test_outlier_exclusion_counts_planted_outliers(make_acts):
    x = make_acts(1000, 8, seed=1)
    planted = torch.tensor([3, 500, 999])
    x[planted] *= 1e4
    acc = MomentAccumulator(8)
    used = acc.update(x, outlier_ratio=50.0)
    assert used == 997 and acc.n == 997 and acc.n_excluded == 3
    keep = torch.ones(1000, dtype=torch.bool)
    keep[planted] = False
    torch.testing.assert_close(acc.moment(), x[keep].T @ x[keep] / 997)
    plain = MomentAccumulator(8)
    plain.update(x)
    assert plain.n_excluded == 0 and plain.n == 1000
    with pytest.raises(ValueError, match="outlier_ratio"):
        acc.update(x, outlier_ratio=-1)


def test_accumulator_errors():
    with pytest.raises(ValueError, match="H must be a positive int"):
        MomentAccumulator(0)
    acc = MomentAccumulator(4)
    with pytest.raises(ValueError, match="n = 0"):
        acc.moment()
    with pytest.raises(ValueError, match="batch_BH has width 3"):
        acc.update(torch.randn(5, 3))
    bad = torch.randn(5, 4)
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="batch_BH contains NaN"):
        acc.update(bad)
    with pytest.raises(TypeError, match="floating"):
        acc.update(torch.ones(5, 4, dtype=torch.long))


# ---- AIP geometry --------------------------------------------------------------------------
@given(seed=st.integers(0, 10_000), H=st.integers(2, 8))
def test_aip_cosine_is_invariant_to_invertible_maps(seed, H, make_acts):
    g = torch.Generator().manual_seed(seed)
    m = make_acts(40 * H, H, seed=seed)
    A = _random_map(H, g)
    u, v = torch.randn(6, H, generator=g, dtype=f64), torch.randn(6, H, generator=g, dtype=f64)
    aip, aip_A = AIP.fit(m), AIP.fit(m @ A.T)            # rows: A m  <=>  m @ Aᵀ
    torch.testing.assert_close(aip_A.cosine(u @ A.T, v @ A.T), aip.cosine(u, v), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(aip_A.cosine_matrix(u @ A.T, v @ A.T), aip.cosine_matrix(u, v), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(aip_A.inner(u @ A.T, v @ A.T), aip.inner(u, v), rtol=1e-6, atol=1e-9)


def test_euclidean_cosine_is_not_invariant(make_acts):
    g = torch.Generator().manual_seed(1)
    A = _random_map(6, g)
    u, v = torch.randn(20, 6, generator=g, dtype=f64), torch.randn(20, 6, generator=g, dtype=f64)
    assert (_euclid_cos(u @ A.T, v @ A.T) - _euclid_cos(u, v)).abs().max() > 0.1


def test_whitened_data_has_identity_second_moment(make_acts):
    m = make_acts(2000, 10, seed=2)
    aip = AIP.fit(m, batch_size=333)
    w = aip.whiten(m)
    torch.testing.assert_close(w.T @ w / m.shape[0], torch.eye(10, dtype=f64), rtol=0, atol=1e-9)
    torch.testing.assert_close(aip.W, aip.W.T)
    torch.testing.assert_close(aip.W @ aip.W, aip.S, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(aip.S @ aip.moment, torch.eye(10, dtype=f64), rtol=0, atol=1e-9)
    assert aip.whiten(m.float()).dtype == torch.float32
    assert aip.norm(m[:5]).dtype == f64
    torch.testing.assert_close(aip.norm(m[:5]) ** 2, aip.inner(m[:5], m[:5]))
    ev = torch.linalg.eigvalsh(aip.moment)
    assert aip.condition_number == pytest.approx(float(ev[-1] / ev[0]), rel=1e-9)
    assert aip.n_tokens == 2000 and aip.n_excluded == 0


def test_identity_gives_euclidean_cosines():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    aip = AIP.identity(5)
    torch.testing.assert_close(aip.cosine(u, v), _euclid_cos(u, v))
    torch.testing.assert_close(aip.cosine_matrix(u, v), _euclid_cos(u[:, None], v[None]))
    torch.testing.assert_close(aip.inner(u, v), (u.double() * v.double()).sum(1))
    assert aip.condition_number == 1.0
    # broadcasting: one vector against many
    torch.testing.assert_close(aip.cosine(u[0], v), _euclid_cos(u[0].expand_as(v), v))


def test_aip_recentres_angles_of_offset_data(make_acts):
    """Spec §2 in miniature: a common direction biases Euclidean cosines; the AIP removes the bias."""
    train, held = make_acts(4000, 12, seed=5, offset=2.0), make_acts(400, 12, seed=6, offset=2.0)
    aip = AIP.fit(train)
    off = ~torch.eye(400, dtype=torch.bool)
    eu = AIP.identity(12).cosine_matrix(held)[off]
    ai = aip.cosine_matrix(held)[off]
    assert eu.mean() > 0.3 and abs(float(ai.mean())) < 0.1


def test_ridge_is_relative_to_mean_eigenvalue(make_acts):
    m = make_acts(500, 6, seed=4)
    M = m.T @ m / 500
    aip = AIP.fit(m, ridge=0.1)
    expected = torch.linalg.inv(M + 0.1 * torch.trace(M) / 6 * torch.eye(6, dtype=f64))
    torch.testing.assert_close(aip.S, expected, rtol=1e-9, atol=1e-12)
    assert aip.ridge == 0.1
    assert AIP.from_moment(M * 1e6, ridge=0.1).condition_number == pytest.approx(aip.condition_number)


def test_rank_deficient_moment_is_a_clear_error(make_acts):
    m = make_acts(5, 8)  # fewer tokens than H
    with pytest.raises(ValueError, match=r"rank 5 of H = 8.*condition number.*ridge=1e-6"):
        AIP.fit(m)
    assert AIP.fit(m, ridge=1e-6).condition_number < 1e9
    z = make_acts(100, 4)
    z[:, 2] = 0
    with pytest.raises(ValueError, match=r"dimensions \[2\] are identically zero"):
        AIP.fit(z)
    with pytest.raises(ValueError, match="trace"):
        AIP.from_moment(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="symmetric"):
        AIP.from_moment(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))


def test_centering_control(make_acts):
    m = make_acts(3000, 6, seed=8, offset=3.0)
    aip_c = AIP.fit(m, center=True)
    mu = m.mean(0)
    torch.testing.assert_close(aip_c.S, torch.linalg.inv((m - mu).T @ (m - mu) / 3000), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(aip_c.mean, mu)
    assert aip_c.centered and not AIP.fit(m).centered
    X = m[:10]
    C = centered_cosine_matrix(X, mean=mu)
    torch.testing.assert_close(C, AIP.identity(6).cosine_matrix(X - mu))
    # centring removes a shift: adding a constant to data and mean changes nothing
    torch.testing.assert_close(centered_cosine_matrix(X + 5, mean=mu + 5), C)


def test_about_mean_is_the_aip_of_the_covariance_with_the_same_ridge(make_acts):
    m = make_acts(3000, 6, seed=8, offset=3.0)
    for ridge in (0.0, 1e-3):
        moment = AIP.fit(m, ridge=ridge)
        about = moment.about_mean()
        torch.testing.assert_close(about.S, AIP.fit(m, ridge=ridge, center=True).S, rtol=1e-8, atol=1e-10)
        assert about.centered and about.ridge == ridge and not moment.centered
        assert about.about_mean() is about
    # whitened by it, the rows have identity covariance (by the uncentred moment they do not)
    w = AIP.fit(m).about_mean().whiten(m.double())
    torch.testing.assert_close(torch.cov(w.T, correction=0), torch.eye(6, dtype=torch.float64), atol=1e-8, rtol=0)
    assert float((torch.cov(AIP.fit(m).whiten(m.double()).T, correction=0) - torch.eye(6)).abs().max()) > 0.1
    with pytest.raises(ValueError, match="no mean"):
        AIP.from_moment(m.T.double() @ m.double() / 3000).about_mean()


# ---- persistence -------------------------------------------------------------------------------
def test_eigendecomposition_runs_on_one_thread_and_puts_the_count_back(make_acts, monkeypatch):
    seen, eigh = [], torch.linalg.eigh

    def eigh_recording_threads(M):
        seen.append(torch.get_num_threads())
        return eigh(M)
    monkeypatch.setattr(torch.linalg, "eigh", eigh_recording_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        aip = AIP.fit(make_acts(500, 12))
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), torch_threads(1):  # put back after an error too
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(aip.moment @ aip.S, torch.eye(12, dtype=f64), atol=1e-9)


def test_save_load_round_trip(make_acts, tmp_path):
    aip = AIP.fit(make_acts(400, 5), ridge=1e-3, outlier_ratio=50, center=False)
    p = aip.save(tmp_path / "a.safetensors")
    back = AIP.load(p)
    assert torch.equal(back.S, aip.S) and torch.equal(back.W, aip.W) and torch.equal(back.mean, aip.mean)
    assert (back.n_tokens, back.n_excluded, back.ridge, back.centered) == (400, 0, 1e-3, False)
    ident = AIP.identity(3)
    ident.save(tmp_path)                                # a folder: aip.safetensors inside
    assert AIP.load(tmp_path).kind == "identity" and AIP.load(tmp_path).mean is None


def test_missing_and_corrupt_files_are_refused(make_acts, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AIP.load(tmp_path / "nope.safetensors")
    p = AIP.fit(make_acts(100, 4)).save(tmp_path / "a.safetensors")
    data = bytearray(p.read_bytes())
    data[-9] ^= 0xFF                                    # flip bits inside the tensor data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        AIP.load(bad)
    bad.write_bytes(p.read_bytes()[: len(data) // 2])   # truncated
    with pytest.raises(ValueError, match="corrupt, truncated"):
        AIP.load(bad)
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable AIP file"):
        AIP.load(bad)
    atomic_save_safetensors(bad, {"x": torch.zeros(2)})  # valid safetensors, not an AIP
    with pytest.raises(ValueError, match="not a readable AIP file"):
        AIP.load(bad)


# ---- bad input ------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    aip = AIP.identity(4)
    with pytest.raises(ValueError, match="u must have last dimension H = 4"):
        aip.inner(torch.randn(3, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="v contains NaN"):
        aip.cosine(torch.randn(4), torch.tensor([1.0, math.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"u has zero vectors \(rows \[1\]\)"):
        aip.cosine(torch.stack([torch.ones(4), torch.zeros(4)]), torch.ones(2, 4))
    with pytest.raises(ValueError, match="X has zero vectors"):
        aip.cosine_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="Y has width 3"):
        aip.cosine_matrix(torch.ones(2, 4), torch.ones(2, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        aip.whiten([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="acts yielded no rows"):
        AIP.fit([])
    with pytest.raises(ValueError, match="H = 0"):
        AIP.fit(torch.zeros(10, 0))
    with pytest.raises(ValueError, match="acts contains NaN"):
        AIP.fit(torch.full((10, 3), math.inf))
    with pytest.raises(ValueError, match="ridge must be"):
        AIP.fit(torch.randn(50, 3), ridge=-1.0)
    with pytest.raises(ValueError, match="H must be a positive int"):
        AIP.identity(0)
    with pytest.raises(ValueError, match="all 10 rows were excluded"):
        AIP.fit(torch.randn(10, 3), outlier_ratio=1e-9)
